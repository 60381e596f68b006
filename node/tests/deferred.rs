//! Deferred delivery on one node with the embedded spool (no broker, no Redis): the
//! API (202, `GET`, `DELETE`, idempotency, other keys' ids, expiry), `on-outage`
//! against a cut path, dead-lettering, passthrough refusal, and the spool across a
//! restart. The broker-backed cases are in `deferred_broker.rs`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::deferred::{marked, received};
use common::*;
use http::{Method, StatusCode};
use strait_chaos::faultproxy::{FaultProxy, FaultProxyHandle};
use strait_chaos::mock::{Fault, MockConfig, MockHandle, MockUpstream};
use strait_node::config::{RawConfig, Secret};
use strait_node::Node;

const OTHER_KEY: &str = "strait-client-key-bravo";

/// A node whose upstream path runs through a fault proxy, with its spool in `dir`.
struct Rig {
    node: Option<Node>,
    mock: MockHandle,
    proxy: FaultProxyHandle,
    url: String,
    admin: String,
}

impl Rig {
    async fn start(dir: &Path, tweak: impl FnOnce(&mut RawConfig)) -> Rig {
        let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
        Rig::start_on(dir, mock, tweak).await
    }

    async fn start_on(dir: &Path, mock: MockHandle, tweak: impl FnOnce(&mut RawConfig)) -> Rig {
        let proxy = FaultProxy::start(mock.addr()).await.unwrap();
        let node = start_node(dir, proxy.addr(), tweak, &UPSTREAM_KEYS).await;
        let url = format!("http://{}", node.public_addr());
        let admin = format!("http://{}", node.admin_addr());
        Rig {
            node: Some(node),
            mock,
            proxy,
            url,
            admin,
        }
    }

    /// No connection reaches the upstream: refused, and pooled ones reset.
    fn cut(&self) {
        self.proxy.set_refuse(true);
        self.proxy.reset_all();
    }

    fn heal(&self) {
        self.proxy.set_refuse(false);
    }

    async fn defer(&self, mode: &str, marker: &str, extra: &[(&str, &str)]) -> Resp {
        let mut h = auth(CLIENT_KEY).to_vec();
        h.push(("strait-defer", mode));
        h.extend_from_slice(extra);
        post_json(
            &format!("{}/v1/messages", self.url),
            &h,
            &marked(marker, false),
        )
        .await
    }

    async fn result(&self, id: &str, key: &str) -> Resp {
        get(&format!("{}/v1/strait/deferred/{id}", self.url), &auth(key)).await
    }

    /// Polls until the id is no longer open (202), or panics after `limit`.
    async fn settled(&self, id: &str, limit: Duration) -> Resp {
        let started = std::time::Instant::now();
        loop {
            let r = self.result(id, CLIENT_KEY).await;
            if r.status != StatusCode::ACCEPTED {
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

    /// Requests the mock received carrying `marker`.
    fn received(&self, marker: &str) -> usize {
        received(&self.mock, marker)
    }

    async fn stop(&mut self) {
        if let Some(node) = self.node.take() {
            node.drain().await;
        }
    }
}

async fn start_node(
    dir: &Path,
    upstream: std::net::SocketAddr,
    tweak: impl FnOnce(&mut RawConfig),
    upstream_keys: &[&str],
) -> Node {
    let mut raw = RawConfig::default();
    raw.listen.public = "127.0.0.1:0".into();
    raw.listen.admin = "127.0.0.1:0".into();
    raw.upstream.base_url = format!("http://{upstream}");
    raw.upstream.connect_timeout = Duration::from_secs(1);
    raw.log.access_log = false;
    raw.cluster.state_dir = dir.to_path_buf();
    raw.deferred.claim_lease = Duration::from_secs(2);
    common::quiet_probes(&mut raw);
    common::one_event_loop(&mut raw);
    tweak(&mut raw);
    let keys = upstream_keys.iter().map(|k| Secret::new(*k)).collect();
    let clients = [CLIENT_KEY, OTHER_KEY]
        .iter()
        .map(|k| Secret::new(*k))
        .collect();
    let config = raw.validate(keys, clients).expect("valid test config");
    Node::start(config).await.expect("node starts")
}

/// A 202's id: queued, in this node's region.
fn accepted_id(r: &Resp) -> String {
    let id = common::deferred::accepted_id(r);
    assert_eq!(r.json()["status"], "queued");
    assert!(id.starts_with("dfr_default_"), "{id}");
    id
}

#[tokio::test]
async fn always_queues_and_get_returns_exactly_the_upstream_answer() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(dir.path(), |_| {}).await;

    let id = accepted_id(&rig.defer("always", "m-always", &[]).await);
    let done = rig.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    assert_eq!(done.header("content-type"), Some("application/json"));
    assert_eq!(done.header("x-strait-deferred"), Some(id.as_str()));
    let msg = done.json();
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["role"], "assistant");
    assert_eq!(rig.received("m-always"), 1);
    // The upstream got the version header and never the client's key or strait-defer.
    let sent = rig.mock.requests().into_iter().last().unwrap();
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert!(sent.header("strait-defer").is_none());
    assert!(UPSTREAM_KEYS.contains(&sent.header("x-api-key").unwrap()));

    // A streaming request: the stored result is the stream as the upstream sent it.
    let mut h = auth(CLIENT_KEY).to_vec();
    h.push(("strait-defer", "always"));
    let r = post_json(
        &format!("{}/v1/messages", rig.url),
        &h,
        &marked("m-stream", true),
    )
    .await;
    let id = accepted_id(&r);
    let done = rig.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(done.status, StatusCode::OK);
    assert!(done
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let text = done.text();
    assert!(
        text.contains("event: message_start") && text.contains("event: message_stop"),
        "{text}"
    );

    // POST /v1/strait/deferred/messages always queues too.
    let r = post_json(
        &format!("{}/v1/strait/deferred/messages", rig.url),
        &auth(CLIENT_KEY),
        &marked("m-route", false),
    )
    .await;
    let id = accepted_id(&r);
    assert_eq!(
        rig.settled(&id, Duration::from_secs(20)).await.status,
        StatusCode::OK
    );
    assert_eq!(rig.received("m-route"), 1);

    let metrics = get(&format!("{}/metrics", rig.admin), &[]).await.text();
    assert!(
        metrics.contains("strait_deferred_queued_total{how=\"always\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("strait_deferred_delivered_total{outcome=\"done\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn on_outage_is_served_directly_and_queued_only_when_nothing_reaches_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(dir.path(), |_| {}).await;

    // The path works: an ordinary answer, nothing queued.
    let r = rig.defer("on-outage", "m-direct", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["type"], "message");

    // The path is cut: 202s.
    rig.cut();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(accepted_id(
            &rig.defer("on-outage", &format!("m-outage-{i}"), &[]).await,
        ));
    }
    // A client without strait-defer gets today's error.
    let plain = rig.defer("", "m-plain", &[]).await;
    assert_eq!(
        plain.status,
        StatusCode::BAD_REQUEST,
        "an empty strait-defer value is refused"
    );
    let mut h = auth(CLIENT_KEY).to_vec();
    h.push(("content-type", "application/json"));
    let plain = send(
        Method::POST,
        &format!("{}/v1/messages", rig.url),
        &h,
        marked("m-plain", false).to_string(),
    )
    .await;
    plain.assert_gateway_error(502, "api_error");
    // While cut, the ids stay open.
    let open = rig.result(&ids[0], CLIENT_KEY).await;
    assert_eq!(open.status, StatusCode::ACCEPTED);
    assert!(matches!(
        open.json()["status"].as_str(),
        Some("queued" | "delivering")
    ));

    // The path is back: every one delivered, once.
    rig.heal();
    for (i, id) in ids.iter().enumerate() {
        let done = rig.settled(id, Duration::from_secs(60)).await;
        assert_eq!(done.status, StatusCode::OK, "{}", done.text());
        assert_eq!(rig.received(&format!("m-outage-{i}")), 1);
    }
}

#[tokio::test]
async fn a_request_sent_and_then_unanswered_is_not_deferred() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(dir.path(), |raw| {
        raw.upstream.read_timeout = Duration::from_millis(500);
    })
    .await;
    for key in UPSTREAM_KEYS {
        rig.mock
            .set_key_fault(key, Fault::latency(Duration::from_secs(3)));
    }
    let r = rig.defer("on-outage", "m-timeout", &[]).await;
    r.assert_gateway_error(504, "api_error");
    assert_eq!(rig.received("m-timeout"), 1, "sent once, not queued");
}

#[tokio::test]
async fn ids_belong_to_their_key_and_unknown_ones_are_404() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(dir.path(), |_| {}).await;
    let id = accepted_id(&rig.defer("always", "m-owner", &[]).await);
    assert_eq!(
        rig.settled(&id, Duration::from_secs(20)).await.status,
        StatusCode::OK
    );

    rig.result(&id, OTHER_KEY)
        .await
        .assert_gateway_error(404, "not_found_error");
    let unknown = format!("dfr_default_{:032x}", 7);
    rig.result(&unknown, CLIENT_KEY)
        .await
        .assert_gateway_error(404, "not_found_error");
    rig.result("../../etc/passwd", CLIENT_KEY)
        .await
        .assert_gateway_error(404, "not_found_error");
    rig.result("nonsense", CLIENT_KEY)
        .await
        .assert_gateway_error(404, "not_found_error");
    let other_region = format!("dfr_west_{:032x}", 7);
    let r = rig.result(&other_region, CLIENT_KEY).await;
    r.assert_gateway_error(404, "not_found_error");
    assert!(r.text().contains("region west"), "{}", r.text());
    // Another key cannot cancel it either.
    let del = send(
        Method::DELETE,
        &format!("{}/v1/strait/deferred/{id}", rig.url),
        &auth(OTHER_KEY),
        "",
    )
    .await;
    del.assert_gateway_error(404, "not_found_error");
    // No key: 401.
    get(&format!("{}/v1/strait/deferred/{id}", rig.url), &[])
        .await
        .assert_gateway_error(401, "authentication_error");
}

#[tokio::test]
async fn an_idempotency_key_returns_the_first_id_and_queues_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(dir.path(), |_| {}).await;
    let first = accepted_id(
        &rig.defer("always", "m-idem", &[("idempotency-key", "job-42")])
            .await,
    );
    let again = rig
        .defer("always", "m-idem", &[("idempotency-key", "job-42")])
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.json()["id"], first.as_str());
    assert_eq!(
        rig.settled(&first, Duration::from_secs(20)).await.status,
        StatusCode::OK
    );
    let after = rig
        .defer("always", "m-idem", &[("idempotency-key", "job-42")])
        .await;
    assert_eq!(after.json()["id"], first.as_str());
    assert_eq!(after.json()["status"], "done");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rig.received("m-idem"), 1, "sent upstream once");

    // The same key with another body: 422. Another client key: its own id.
    rig.defer(
        "always",
        "m-idem-other-body",
        &[("idempotency-key", "job-42")],
    )
    .await
    .assert_gateway_error(422, "invalid_request_error");
    let mut h = auth(OTHER_KEY).to_vec();
    h.extend([("strait-defer", "always"), ("idempotency-key", "job-42")]);
    let theirs = post_json(
        &format!("{}/v1/messages", rig.url),
        &h,
        &marked("m-idem", false),
    )
    .await;
    assert_ne!(accepted_id(&theirs), first);
}

#[tokio::test]
async fn cancel_works_while_queued_and_the_request_is_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(dir.path(), |_| {}).await;
    rig.cut();
    let id = accepted_id(&rig.defer("always", "m-cancel", &[]).await);
    let url = format!("{}/v1/strait/deferred/{id}", rig.url);
    // A delivery attempt may hold it for a moment (409): cancel once it is back.
    let mut cancelled = None;
    for _ in 0..100 {
        let r = send(Method::DELETE, &url, &auth(CLIENT_KEY), "").await;
        if r.status == StatusCode::CONFLICT {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        cancelled = Some(r);
        break;
    }
    let r = cancelled.expect("cancelled within 5 s");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["status"], "cancelled");
    rig.result(&id, CLIENT_KEY)
        .await
        .assert_gateway_error(410, "not_found_error");
    rig.heal();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rig.received("m-cancel"), 0);
    // A finished one cannot be cancelled.
    let done = accepted_id(&rig.defer("always", "m-done", &[]).await);
    rig.settled(&done, Duration::from_secs(30)).await;
    let r = send(
        Method::DELETE,
        &format!("{}/v1/strait/deferred/{done}", rig.url),
        &auth(CLIENT_KEY),
        "",
    )
    .await;
    r.assert_gateway_error(409, "invalid_request_error");
}

#[tokio::test]
async fn results_expire_after_their_ttl_with_410() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(dir.path(), |raw| {
        raw.deferred.result_ttl = Duration::from_secs(2);
    })
    .await;
    let id = accepted_id(&rig.defer("always", "m-ttl", &[]).await);
    assert_eq!(
        rig.settled(&id, Duration::from_secs(20)).await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = rig.result(&id, CLIENT_KEY).await;
    r.assert_gateway_error(410, "not_found_error");
    assert!(r.text().contains("expired"), "{}", r.text());
}

#[tokio::test]
async fn a_request_the_upstream_keeps_refusing_is_dead_lettered_with_its_last_error() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(dir.path(), |raw| {
        raw.deferred.delivery_limit = 2;
        raw.upstream.max_attempts = 1;
    })
    .await;
    for key in UPSTREAM_KEYS {
        rig.mock.set_key_fault(key, Fault::overloaded());
    }
    let id = accepted_id(&rig.defer("always", "m-dead", &[]).await);
    let r = rig.settled(&id, Duration::from_secs(40)).await;
    r.assert_gateway_error(502, "api_error");
    assert_eq!(r.header("x-strait-deferred-status"), Some("dead_lettered"));
    assert!(
        r.text().contains("529"),
        "the last error is named: {}",
        r.text()
    );
    let metrics = get(&format!("{}/metrics", rig.admin), &[]).await.text();
    assert!(
        metrics.contains("strait_deferred_dead_lettered_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_spool_keeps_queued_requests_across_a_node_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(dir.path(), |_| {}).await;
    rig.cut();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(accepted_id(
            &rig.defer("always", &format!("m-restart-{i}"), &[]).await,
        ));
    }
    rig.stop().await;
    let Rig { mock, proxy, .. } = rig;
    proxy.shutdown().await;
    let rig = Rig::start_on(dir.path(), mock, |_| {}).await;
    for (i, id) in ids.iter().enumerate() {
        let done = rig.settled(id, Duration::from_secs(60)).await;
        assert_eq!(done.status, StatusCode::OK, "{}", done.text());
        assert_eq!(rig.received(&format!("m-restart-{i}")), 1);
    }
}

#[tokio::test]
async fn a_passthrough_gateway_refuses_deferral_and_says_why() {
    let h = Harness::passthrough().await;
    let mut hdr = auth("sk-ant-client-own-key").to_vec();
    hdr.push(("strait-defer", "always"));
    let r = post_json(
        &format!("{}/v1/messages", h.url),
        &hdr,
        &message_body(false),
    )
    .await;
    r.assert_gateway_error(400, "invalid_request_error");
    assert!(r.text().contains("store your API key"), "{}", r.text());
    assert!(!r.text().contains("sk-ant-client-own-key"));
    let r = post_json(
        &format!("{}/v1/strait/deferred/messages", h.url),
        &auth("sk-ant-client-own-key"),
        &message_body(false),
    )
    .await;
    r.assert_gateway_error(400, "invalid_request_error");
    assert_eq!(h.mock.request_count(), 0);
}

#[tokio::test]
async fn bad_defer_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(dir.path(), |_| {}).await;
    let r = rig.defer("later", "m-bad", &[]).await;
    r.assert_gateway_error(400, "invalid_request_error");
    assert!(r.text().contains("on-outage or always"));
    // Only Messages requests may wait.
    let mut h = auth(CLIENT_KEY).to_vec();
    h.push(("strait-defer", "always"));
    let r = post_json(
        &format!("{}/v1/messages/count_tokens", rig.url),
        &h,
        &message_body(false),
    )
    .await;
    r.assert_gateway_error(400, "invalid_request_error");
    // Invalid JSON is refused before anything is queued.
    h.push(("content-type", "application/json"));
    let r = send(
        Method::POST,
        &format!("{}/v1/strait/deferred/messages", rig.url),
        &h,
        "{not json",
    )
    .await;
    r.assert_gateway_error(400, "invalid_request_error");
    let r = send(
        Method::PUT,
        &format!("{}/v1/strait/deferred/messages", rig.url),
        &h,
        "{}",
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rig.mock.request_count(), 0);
}
