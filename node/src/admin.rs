//! The admin listener: `/livez`, `/readyz`, `/readyz/local`, `/metrics`, `/keys` (the upstream
//! keys' states) and `/stats` (the dashboard's JSON, see [`crate::stats`]). Health answers are also served on the public listener (see
//! `proxy::handle`); the rest is admin-only.

use http::{header, HeaderValue, Response, StatusCode};

use crate::head::ClientRequest;
use crate::state::Shared;
use crate::stream::ProxyBody;

/// Serves one admin request.
pub fn handle(shared: &Shared, req: ClientRequest) -> Response<ProxyBody> {
    match req.uri.path() {
        p @ ("/livez" | "/readyz" | "/readyz/local") => health(shared, p),
        "/metrics" => {
            refresh_gauges(shared);
            let mut r = Response::new(ProxyBody::full(shared.metrics.render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/stats" => crate::stats::handle(shared, &req),
        "/keys" => {
            let mut r = Response::new(ProxyBody::full(keys_json(shared)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => {
            let mut r = Response::new(ProxyBody::full("not found\n"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

/// `/livez` (the process answers), `/readyz` (DNS-facing: the upstream path
/// counts) or `/readyz/local` (can this node take work), as health+json: 200 for pass
/// or warn, 503 for fail.
pub fn health(shared: &Shared, path: &str) -> Response<ProxyBody> {
    let (status, body, ctype) = match path {
        "/livez" => (
            StatusCode::OK,
            String::from("{\"status\":\"pass\"}"),
            "application/health+json",
        ),
        "/readyz/local" => {
            let (status, body) = shared.local_readiness();
            (status, body, "application/health+json")
        }
        _ => {
            let (status, body) = shared.readiness();
            (status, body, "application/health+json")
        }
    };
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Gauges derived from state are computed at scrape time rather than on the hot path.
fn refresh_gauges(shared: &Shared) {
    let up = &shared.health.upstream;
    let m = &shared.metrics;
    m.path_state.set(up.circuit.gauge_value());
    if let Some(ms) = up.ttfb.ewma.ms() {
        m.ttfb_ewma.set(ms / 1000.0);
    }
    let census = shared.snapshot.load().census();
    let keys = &shared.metrics.keys;
    for (state, n) in [
        ("ready", census.ready),
        ("cooling", census.cooling),
        ("resting", census.resting),
        ("retired", census.retired),
    ] {
        keys.with_label_values(&[state]).set(n as i64);
    }
    shared
        .metrics
        .draining
        .set(i64::from(shared.health.is_draining()));
}

/// `/keys`: every pool's keys by label and organisation, with their state and the
/// scopes cooling for them (never a key).
fn keys_json(shared: &Shared) -> String {
    let snap = shared.snapshot.load();
    let pools = std::iter::once(("default", &snap.pool))
        .chain(snap.named_pools.iter().map(|(n, p)| (n.as_str(), p)))
        .map(|(name, pool)| {
            let keys: Vec<_> = pool
                .key_states()
                .into_iter()
                .map(|k| {
                    let cooling: Vec<_> = k
                        .cooling
                        .iter()
                        .map(|(scope, left)| {
                            serde_json::json!({"scope": scope, "seconds_left": left.as_secs_f64().ceil()})
                        })
                        .collect();
                    serde_json::json!({
                        "label": k.label,
                        "org": k.org,
                        "state": k.state,
                        "cooling": cooling,
                    })
                })
                .collect();
            serde_json::json!({"pool": name, "keys": keys})
        })
        .collect::<Vec<_>>();
    serde_json::json!({"revision": snap.revision, "pools": pools}).to_string()
}
