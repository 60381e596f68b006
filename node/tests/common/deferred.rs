//! Deferred delivery's test helpers: marked requests the mock's log can be searched
//! for, the 202's id, polling an id until it ends, and a node on a broker and Redis.

use std::path::Path;
use std::time::{Duration, Instant};

use http::StatusCode;
use strait_chaos::mock::MockHandle;
use strait_node::config::{RawConfig, Secret};
use strait_node::Node;

use super::{auth, get, message_body, Resp, CLIENT_KEY, UPSTREAM_KEYS};

/// A Messages body carrying `marker` as `metadata.user_id`.
pub fn marked(marker: &str, stream: bool) -> serde_json::Value {
    let mut body = message_body(stream);
    body["metadata"] = serde_json::json!({ "user_id": marker });
    body
}

/// Requests the mock received carrying `marker`.
pub fn received(mock: &MockHandle, marker: &str) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.json().is_some_and(|v| v["metadata"]["user_id"] == marker))
        .count()
}

/// The id of a 202, after checking its shape.
pub fn accepted_id(r: &Resp) -> String {
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "deferred_request");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/strait/deferred/{id}").as_str())
    );
    id
}

/// `GET /v1/strait/deferred/{id}` with the client key.
pub async fn result(url: &str, id: &str) -> Resp {
    get(&format!("{url}/v1/strait/deferred/{id}"), &auth(CLIENT_KEY)).await
}

/// Polls an id until it ends (no longer 202, nor another region's 404 before a node
/// here took it over); panics after `limit`.
pub async fn settled(url: &str, id: &str, limit: Duration) -> Resp {
    let started = Instant::now();
    loop {
        let r = result(url, id).await;
        let not_yet_here =
            r.status == StatusCode::NOT_FOUND && r.text().contains("belongs to region");
        if r.status != StatusCode::ACCEPTED && !not_yet_here {
            return r;
        }
        assert!(
            started.elapsed() < limit,
            "{id} still open after {limit:?}: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An in-process node of `region` deferring through RabbitMQ at `amqp` and Redis at
/// `redis`, its upstream at `upstream`, its state in `dir`; `tweak` changes the rest.
pub async fn broker_node(
    region: &str,
    amqp: &str,
    redis: &str,
    upstream: std::net::SocketAddr,
    dir: &Path,
    tweak: impl FnOnce(&mut RawConfig),
) -> Node {
    let mut raw = RawConfig::default();
    raw.listen.public = "127.0.0.1:0".into();
    raw.listen.admin = "127.0.0.1:0".into();
    raw.upstream.base_url = format!("http://{upstream}");
    raw.upstream.connect_timeout = Duration::from_secs(1);
    raw.log.access_log = false;
    raw.cluster.region = region.into();
    raw.cluster.state_dir = dir.to_path_buf();
    raw.deferred.amqp_url = Some(amqp.into());
    raw.deferred.redis = Some(redis.into());
    raw.deferred.claim_lease = Duration::from_secs(2);
    raw.deferred.confirm_timeout = Duration::from_secs(2);
    super::quiet_probes(&mut raw);
    super::one_event_loop(&mut raw);
    tweak(&mut raw);
    let keys = UPSTREAM_KEYS.iter().map(|k| Secret::new(*k)).collect();
    let config = raw
        .validate(keys, vec![Secret::new(CLIENT_KEY)])
        .expect("valid config");
    Node::start(config).await.expect("node starts")
}
