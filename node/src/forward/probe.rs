//! Active probes of the direct upstream path: `GET /v1/models` without a key, through
//! the node's own pool and dialer, every `health.probe_interval` (jittered ±20%). Any
//! HTTP answer proves the path (a 401 included: the probe has no key, and a
//! passthrough node has none to give it); a connect or protocol failure or no answer
//! within `health.probe_timeout` is a failure. Results feed the circuit breaker in
//! [`crate::health`], so `/readyz` follows the path with or without traffic.

use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;

use super::Upstream;
use crate::body::RequestBody;
use crate::config::HealthChecks;
use crate::health::{PathState, UpstreamHealth};
use crate::http1::pool::{Outgoing, SendError};
use crate::http1::OutgoingFields;
use crate::metrics::Metrics;

/// The API version the probe names (the models list needs one).
const ANTHROPIC_VERSION: &str = "2023-06-01";
/// The probe's `user-agent`, so the upstream's operators (and test mocks) can tell
/// probes from traffic.
pub const PROBE_USER_AGENT: &str = concat!("strait-probe/", env!("CARGO_PKG_VERSION"));
/// Most of an answer's body read so its connection can be reused (a 401 is small).
const DRAIN_LIMIT: usize = 64 * 1024;
/// A failed probe, or a half-open circuit, is checked again after this share of the
/// interval, so a broken path opens (and a healed one closes) within one interval.
const CONFIRM_DIVISOR: u32 = 8;
const MIN_CONFIRM: Duration = Duration::from_millis(50);

/// Why a probe failed.
#[derive(Debug)]
pub enum ProbeError {
    /// No answer within the probe timeout.
    Timeout,
    /// Connect, TLS or protocol failure (the detail, never a key: probes carry none).
    Failed(String),
}

/// The probe's header fields: no client's, no key.
struct ProbeFields;

static NO_FORWARDED_FOR: HeaderValue = HeaderValue::from_static("");

impl OutgoingFields for ProbeFields {
    fn write_lines(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"anthropic-version: ");
        out.extend_from_slice(ANTHROPIC_VERSION.as_bytes());
        out.extend_from_slice(b"\r\nuser-agent: ");
        out.extend_from_slice(PROBE_USER_AGENT.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    fn forwarded_for(&self) -> &HeaderValue {
        &NO_FORWARDED_FOR
    }

    fn to_map(&self, _api_key: Option<&HeaderValue>) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(2);
        map.insert(
            "anthropic-version",
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
        map.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(PROBE_USER_AGENT),
        );
        map
    }
}

impl Upstream {
    /// One probe: `GET /v1/models` without a key on a pooled or new connection.
    /// Returns the answer's status and the time to its head; the body is read (up to
    /// 64 KB, within what is left of `timeout`) so the connection can be reused.
    pub async fn probe(&self, timeout: Duration) -> Result<(StatusCode, Duration), ProbeError> {
        let target = format!("{}/v1/models", self.config.target.path_prefix);
        let sent = Instant::now();
        let deadline = tokio::time::Instant::from_std(sent + timeout);
        let out = Outgoing {
            method: &Method::GET,
            target: &target,
            headers: &ProbeFields,
            api_key: None,
            at: sent,
            deadline,
        };
        let mut resp = self
            .client
            .send(&out, RequestBody::Full(None))
            .await
            .map_err(|e| match e {
                SendError::Timeout => ProbeError::Timeout,
                e => ProbeError::Failed(format!("{e:?}")),
            })?;
        let rtt = sent.elapsed();
        let mut read = 0;
        while read < DRAIN_LIMIT {
            match tokio::time::timeout_at(deadline, resp.body.frame()).await {
                Ok(Some(Ok(frame))) => read += frame.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
        Ok((resp.status, rtt))
    }
}

/// The probe loop; runs until its task is aborted (at the end of the drain). The
/// first probe goes out one jittered interval after start.
pub async fn run(
    upstream: &Upstream,
    health: &UpstreamHealth,
    metrics: &Metrics,
    checks: &HealthChecks,
) {
    let mut wait = jittered(checks.probe_interval);
    loop {
        tokio::time::sleep(wait).await;
        let result = match upstream.probe(checks.probe_timeout).await {
            Ok((status, rtt)) => {
                tracing::trace!(
                    status = status.as_u16(),
                    rtt_ms = rtt.as_millis() as u64,
                    "upstream probe answered"
                );
                health.probe_answered(rtt);
                "answered"
            }
            Err(e) => {
                tracing::debug!(error = ?e, "upstream probe failed");
                health.probe_failed();
                match e {
                    ProbeError::Timeout => "timeout",
                    ProbeError::Failed(_) => "error",
                }
            }
        };
        metrics.probes.with_label_values(&[result]).inc();
        wait = next_wait(health, checks.probe_interval);
    }
}

/// The wait before the next probe: a jittered interval, or a short one while the
/// breaker is unsettled (a failure below the threshold, or half-open) so the next
/// outcome decides it within the same interval.
fn next_wait(health: &UpstreamHealth, interval: Duration) -> Duration {
    let unsettled = match health.circuit.state() {
        PathState::Closed => health.consecutive_failures() > 0,
        PathState::HalfOpen => true,
        PathState::Open => false,
    };
    if unsettled {
        (interval / CONFIRM_DIVISOR).max(MIN_CONFIRM)
    } else {
        jittered(interval)
    }
}

/// `interval` times a random factor in [0.8, 1.2), so a region's nodes spread out.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.8 + 0.4 * rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_jittered_and_confirmations_short() {
        let i = Duration::from_secs(2);
        for _ in 0..100 {
            let w = jittered(i);
            assert!(w >= Duration::from_millis(1600) && w < Duration::from_millis(2400));
        }
        let h = UpstreamHealth::default();
        assert!(next_wait(&h, i) >= Duration::from_millis(1600));
        h.record_failure();
        assert_eq!(next_wait(&h, i), Duration::from_millis(250));
        h.record_failure();
        assert_eq!(h.circuit.state(), PathState::Open);
        assert!(next_wait(&h, i) >= Duration::from_millis(1600));
        h.probe_answered(Duration::from_millis(5));
        assert_eq!(next_wait(&h, i), Duration::from_millis(250), "half-open");
    }
}
