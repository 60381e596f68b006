//! `GET /stats` on the admin listener: one JSON document with what the coordinators'
//! dashboard shows for this node (traffic, latency, tokens, errors, limits, key pools,
//! readiness), built at request time from the metrics registry and the limiter, so the
//! hot path does nothing more for it. Counters are cumulative since start; readers
//! compute rates and windowed percentiles from the difference of two scrapes.
//!
//! Guarded by the cluster secret ([`Config::cluster_secret`]): `Authorization: Bearer
//! <secret>`. Without a secret configured it answers only on a loopback admin listener.

use std::collections::BTreeMap;

use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use prometheus::proto::MetricFamily;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::head::ClientRequest;
use crate::limit_spec::Dim;
use crate::state::Shared;
use crate::stream::ProxyBody;

/// The document `/stats` answers with; the coordinator reads it with the same type.
/// Unknown fields are kept out of the way (`deferred` arrives with deferred delivery).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeStats {
    pub version: String,
    /// Seconds since the process started.
    pub uptime_seconds: u64,
    /// etcd revision of the cluster config this node serves (0: file config only).
    pub revision: i64,
    pub ready: Readiness,
    pub draining: bool,
    pub requests: Requests,
    pub tokens: Tokens,
    pub active_streams: i64,
    pub downstream_connections: i64,
    /// Whole request duration, every route.
    pub latency: Hist,
    /// Upstream time to response headers, every route.
    pub upstream_ttfb: Hist,
    /// Time to the first content delta of a stream, every model.
    pub ttft: Hist,
    pub errors: Errors,
    pub rate_limited: RateLimited,
    pub limiter: LimiterStats,
    pub keys: KeyPools,
    /// Deferred delivery, once a node reports it: `depth`, `oldest_age_seconds`,
    /// `dead_lettered`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferred: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Readiness {
    /// `pass`, `warn` or `fail` (as `/readyz`).
    pub status: String,
    /// Checks not passing: `(name, status, output)`.
    pub failing: Vec<Check>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Check {
    pub name: String,
    pub status: String,
    pub output: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Requests {
    pub total: u64,
    /// By HTTP status code.
    pub by_status: BTreeMap<String, u64>,
    /// By route (`messages`, `count_tokens`, `models`, ...).
    pub by_route: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
}

/// A histogram merged over its labels: cumulative counts per upper bound (seconds).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Hist {
    pub count: u64,
    pub sum: f64,
    /// `(upper bound in seconds, cumulative count)`, ascending; `+Inf` is `count`.
    pub buckets: Vec<(f64, u64)>,
}

impl Hist {
    /// The `q` quantile (0..=1) by linear interpolation inside the bucket, as
    /// Prometheus' `histogram_quantile`; `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.buckets, self.count, q)
    }

    /// The observations between `earlier` and `self` (same buckets), for a window.
    pub fn since(&self, earlier: &Hist) -> Hist {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, n)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0, |(_, c)| *c);
                (*le, n.saturating_sub(before))
            })
            .collect();
        Hist {
            count: self.count.saturating_sub(earlier.count),
            sum: (self.sum - earlier.sum).max(0.0),
            buckets,
        }
    }
}

/// `histogram_quantile` over cumulative `(upper bound, count)` buckets.
pub fn quantile(buckets: &[(f64, u64)], count: u64, q: f64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * count as f64;
    let mut lower = (0.0, 0u64);
    for &(le, n) in buckets {
        if n as f64 >= rank {
            let in_bucket = (n - lower.1) as f64;
            if in_bucket == 0.0 {
                return Some(le);
            }
            return Some(lower.0 + (le - lower.0) * (rank - lower.1 as f64) / in_bucket);
        }
        lower = (le, n);
    }
    // Above the highest finite bound: that bound is the best answer there is.
    Some(lower.0)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Errors {
    /// Upstream failures by kind (`strait_upstream_errors_total`).
    pub upstream: BTreeMap<String, u64>,
    /// Errors the gateway answered itself, by Anthropic error type.
    pub gateway: BTreeMap<String, u64>,
    /// Streams that failed after they started, by cause.
    pub stream: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimited {
    /// 429s the gateway's own limiter gave.
    pub gateway: u64,
    /// 429s that came from the upstream and went back to the client.
    pub upstream: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LimiterStats {
    /// `local` (in process) or `redis`.
    pub backend: String,
    /// Redis unreachable: every limit falls back to this node's safe share.
    pub degraded: bool,
    pub scopes: Vec<ScopeStats>,
}

/// One limited key or tenant: its limits and, where this node knows it, its usage in
/// the current windows (`used` is empty with Redis until its first background read, and while
/// Redis is unreachable).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ScopeStats {
    /// `key` or `tenant`.
    pub kind: String,
    pub name: String,
    /// By dimension label (`requests`, `input_tokens`, `output_tokens`,
    /// `daily_tokens`, `concurrency`); only the limited ones.
    pub limits: BTreeMap<String, u64>,
    pub used: BTreeMap<String, u64>,
}

impl ScopeStats {
    /// The largest used/limit ratio over its dimensions (0 when nothing is known).
    pub fn fullness(&self) -> f64 {
        self.limits
            .iter()
            .filter(|(_, l)| **l > 0)
            .map(|(d, l)| self.used.get(d).copied().unwrap_or(0) as f64 / *l as f64)
            .fold(0.0, f64::max)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyPools {
    pub ready: u64,
    pub cooling: u64,
    pub resting: u64,
    pub retired: u64,
    pub pools: Vec<PoolStats>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolStats {
    pub pool: String,
    pub keys: Vec<KeyStats>,
}

/// An upstream key by label (never the key): `usable`, `resting:<reason>` (exhausted
/// until its organisation rests out) or `retired:<reason>`, and the scopes cooling
/// for it after upstream 429s (transient).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyStats {
    pub label: String,
    pub org: String,
    pub state: String,
    pub cooling: Vec<(String, f64)>,
}

/// Serves `/stats`: the document, or 401 without the cluster secret.
pub fn handle(shared: &Shared, req: &ClientRequest) -> Response<ProxyBody> {
    let presented = req
        .headers
        .get(&header::AUTHORIZATION)
        .and_then(|v| std::str::from_utf8(v).ok());
    if let Err(why) = authorize(&shared.config, presented) {
        let mut r = Response::new(ProxyBody::full(
            serde_json::json!({"error": {"type": "unauthorized", "message": why}}).to_string(),
        ));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return r;
    }
    let body = serde_json::to_string(&collect(shared)).unwrap_or_default();
    let mut r = Response::new(ProxyBody::full(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        HeaderName::from_static("cache-control"),
        HeaderValue::from_static("no-store"),
    );
    r
}

/// Whether `authorization` (the header's value) may read `/stats`; the reason if not.
pub fn authorize(config: &Config, authorization: Option<&str>) -> Result<(), &'static str> {
    let Some(secret) = &config.cluster_secret else {
        return if config.admin_listen.ip().is_loopback() {
            Ok(())
        } else {
            Err("no cluster secret is configured: /stats answers only on a loopback admin listener (set STRAIT_CLUSTER_SECRET)")
        };
    };
    let presented = authorization
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(p) if bool::from(p.as_bytes().ct_eq(secret.expose().as_bytes())) => Ok(()),
        Some(_) => Err("wrong cluster secret"),
        None => Err("send the cluster secret as Authorization: Bearer <secret>"),
    }
}

/// Builds the document from the registry, the limiter and the key pools.
pub fn collect(shared: &Shared) -> NodeStats {
    let families = shared.metrics.registry.gather();
    let fam = |name: &str| families.iter().find(|f| f.name() == name);
    let (ready_code, ready_body) = shared.readiness();
    let ready: serde_json::Value = serde_json::from_str(&ready_body).unwrap_or_default();
    let mut failing = Vec::new();
    if let Some(checks) = ready["checks"].as_object() {
        for (name, list) in checks {
            let c = &list[0];
            let status = c["status"].as_str().unwrap_or("");
            if status != "pass" {
                failing.push(Check {
                    name: name.clone(),
                    status: status.to_string(),
                    output: c["output"].as_str().unwrap_or("").to_string(),
                });
            }
        }
    }
    let status = ready["status"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            if ready_code.is_success() {
                "pass"
            } else {
                "fail"
            }
            .to_string()
        });

    let by_status = sum_by(fam("strait_requests_total"), "status");
    let by_route = sum_by(fam("strait_requests_total"), "route");
    let tokens = sum_by(fam("strait_tokens_total"), "direction");
    let limited: u64 = fam("strait_limiter_decisions_total")
        .map(|f| {
            f.get_metric()
                .iter()
                .filter(|m| label(m, "result") == "limited")
                .map(|m| m.get_counter().get_value() as u64)
                .sum()
        })
        .unwrap_or(0);
    let all_429 = by_status.get("429").copied().unwrap_or(0);

    let census = shared.snapshot.load().census();
    let snap = shared.snapshot.load();
    let pools = std::iter::once(("default", &snap.pool))
        .chain(snap.named_pools.iter().map(|(n, p)| (n.as_str(), p)))
        .map(|(name, pool)| PoolStats {
            pool: name.to_string(),
            keys: pool
                .key_states()
                .into_iter()
                .map(|k| KeyStats {
                    label: k.label,
                    org: k.org,
                    state: k.state,
                    cooling: k
                        .cooling
                        .into_iter()
                        .map(|(s, left)| (s, left.as_secs_f64().ceil()))
                        .collect(),
                })
                .collect(),
        })
        .collect();

    let scopes = shared
        .limiter
        .usage()
        .into_iter()
        .map(|(scope, used)| {
            let mut limits = BTreeMap::new();
            let mut usage = BTreeMap::new();
            for (i, d) in Dim::ALL.iter().enumerate() {
                if let Some(l) = scope.spec.get(*d) {
                    limits.insert(d.label().to_string(), l);
                    if let Some(u) = used {
                        usage.insert(d.label().to_string(), u[i]);
                    }
                }
            }
            ScopeStats {
                kind: scope.kind.label().to_string(),
                name: scope.name.to_string(),
                limits,
                used: usage,
            }
        })
        .collect();

    NodeStats {
        version: ready["version"].as_str().unwrap_or("").to_string(),
        uptime_seconds: ready["checks"]["uptime"][0]["observedValue"]
            .as_u64()
            .unwrap_or(0),
        revision: snap.revision,
        ready: Readiness { status, failing },
        draining: shared.health.is_draining(),
        requests: Requests {
            total: by_status.values().sum(),
            by_status,
            by_route,
        },
        tokens: Tokens {
            input: tokens.get("input").copied().unwrap_or(0),
            output: tokens.get("output").copied().unwrap_or(0),
        },
        active_streams: shared.metrics.active_streams.get(),
        downstream_connections: shared.metrics.downstream_connections.get(),
        latency: merged(fam("strait_request_duration_seconds")),
        upstream_ttfb: merged(fam("strait_upstream_ttfb_seconds")),
        ttft: merged(fam("strait_time_to_first_token_seconds")),
        errors: Errors {
            upstream: sum_by(fam("strait_upstream_errors_total"), "kind"),
            gateway: sum_by(fam("strait_gateway_errors_total"), "type"),
            stream: sum_by(fam("strait_stream_failures_total"), "cause"),
        },
        rate_limited: RateLimited {
            gateway: limited,
            upstream: all_429.saturating_sub(limited),
        },
        limiter: LimiterStats {
            backend: match shared.limiter.redis_state() {
                None => "local",
                Some(_) => "redis",
            }
            .to_string(),
            degraded: shared.limiter.redis_state() == Some(true),
            scopes,
        },
        keys: KeyPools {
            ready: census.ready as u64,
            cooling: census.cooling as u64,
            resting: census.resting as u64,
            retired: census.retired as u64,
            pools,
        },
        deferred: shared.deferral.as_ref().map(|d| {
            let m = &d.metrics;
            let queue_up = d.queue.state() == crate::defer::BackendState::Up;
            let store_up = d.store.state() == crate::defer::BackendState::Up;
            serde_json::json!({
                "queue": d.queue.kind(),
                "store": d.store.kind(),
                "reachable": queue_up && store_up,
                "depth": m.depth.get(),
                "oldest_age_seconds": m.oldest_age_seconds.get(),
                "dead_lettered": m.dead_lettered.get(),
                "queued": m.queued.with_label_values(&["always"]).get()
                    + m.queued.with_label_values(&["on_outage"]).get(),
            })
        }),
    }
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map_or("", |l| l.value())
}

/// A counter family summed by one label's values.
fn sum_by(f: Option<&MetricFamily>, by: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for m in f.map(|f| f.get_metric()).unwrap_or_default() {
        *out.entry(label(m, by).to_string()).or_insert(0) += m.get_counter().get_value() as u64;
    }
    out
}

/// A histogram family merged over all its label sets.
fn merged(f: Option<&MetricFamily>) -> Hist {
    let mut h = Hist::default();
    for m in f.map(|f| f.get_metric()).unwrap_or_default() {
        let p = m.get_histogram();
        h.count += p.get_sample_count();
        h.sum += p.get_sample_sum();
        for (i, b) in p.get_bucket().iter().enumerate() {
            match h.buckets.get_mut(i) {
                Some(slot) => slot.1 += b.cumulative_count(),
                None => h.buckets.push((b.upper_bound(), b.cumulative_count())),
            }
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_buckets_and_windows_subtract() {
        let h = Hist {
            count: 100,
            sum: 10.0,
            buckets: vec![(0.1, 50), (0.2, 90), (1.0, 100)],
        };
        assert_eq!(h.quantile(0.5), Some(0.1));
        let p99 = h.quantile(0.99).unwrap();
        assert!((p99 - 0.92).abs() < 1e-9, "{p99}");
        assert_eq!(Hist::default().quantile(0.5), None);
        let earlier = Hist {
            count: 50,
            sum: 2.0,
            buckets: vec![(0.1, 50), (0.2, 50), (1.0, 50)],
        };
        let w = h.since(&earlier);
        assert_eq!(w.count, 50);
        assert_eq!(w.buckets, vec![(0.1, 0), (0.2, 40), (1.0, 50)]);
        // Every windowed request was slower than 0.1 s.
        assert!(w.quantile(0.5).unwrap() > 0.1);
    }

    #[test]
    fn stats_need_the_cluster_secret_or_a_loopback_listener() {
        let mut c = crate::config::RawConfig::default()
            .validate(Vec::new(), Vec::new())
            .unwrap();
        c.admin_listen = "127.0.0.1:9090".parse().unwrap();
        assert!(authorize(&c, None).is_ok(), "loopback, no secret: allowed");
        c.admin_listen = "10.0.0.5:9090".parse().unwrap();
        assert!(authorize(&c, None).unwrap_err().contains("loopback"));
        c.cluster_secret = Some(crate::config::Secret::new("s3cret-s3cret-s3cret"));
        assert!(authorize(&c, Some("Bearer s3cret-s3cret-s3cret")).is_ok());
        assert_eq!(
            authorize(&c, Some("Bearer s3cret-s3cret-s3cre")),
            Err("wrong cluster secret")
        );
        assert!(authorize(&c, None).is_err());
        // With a secret, loopback is no excuse.
        c.admin_listen = "127.0.0.1:9090".parse().unwrap();
        assert!(authorize(&c, None).is_err());
    }
}
