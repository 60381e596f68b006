//! Deferred delivery with RabbitMQ and Redis (AOF), both real and started here: the
//! broker down (503, never a 202) and back (the quorum queue kept its messages),
//! Redis restarted, a forced duplicate delivery, node processes killed with SIGKILL
//! between publish and confirm, between claim and send, and between send and ack,
//! and a Jepsen-style count over 2,000 requests across node kills and a broker
//! restart (its table goes to docs/deferred.md).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::deferred::*;
use common::process::NodeProcess;
use common::redis::RedisServer;
use common::*;
use http::{Method, StatusCode};
use strait_chaos::faultproxy::{FaultProxy, FaultProxyHandle};
use strait_chaos::mock::{Fault, MockConfig, MockHandle, MockUpstream};
use strait_chaos::rabbitmq::RabbitMq;
use strait_node::config::{RawConfig, Secret};

/// Redis that keeps acknowledged writes: every write fsynced, no eviction.
fn durable_redis() -> RedisServer {
    RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--maxmemory-policy",
        "noeviction",
    ])
}

fn redis_url(r: &RedisServer) -> String {
    format!("redis://127.0.0.1:{}/", r.port)
}

/// Every marker the mock received, with how often.
fn received_counts(mock: &MockHandle) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in mock.requests() {
        if let Some(m) = r
            .json()
            .and_then(|v| v["metadata"]["user_id"].as_str().map(String::from))
        {
            *counts.entry(m).or_insert(0) += 1;
        }
    }
    counts
}

async fn defer(url: &str, marker: &str, extra: &[(&str, &str)]) -> Resp {
    let mut h = auth(CLIENT_KEY).to_vec();
    h.push(("strait-defer", "always"));
    h.extend_from_slice(extra);
    post_json(&format!("{url}/v1/messages"), &h, &marked(marker, false)).await
}

/// A node of region `default` on `broker` and `redis`, and its public URL.
async fn start_node(
    broker: &RabbitMq,
    redis: &RedisServer,
    upstream: std::net::SocketAddr,
    dir: &Path,
    tweak: impl FnOnce(&mut RawConfig),
) -> (strait_node::Node, String) {
    let node = broker_node(
        "default",
        &broker.url(),
        &redis_url(redis),
        upstream,
        dir,
        tweak,
    )
    .await;
    let url = format!("http://{}", node.public_addr());
    (node, url)
}

async fn cut_path(proxy: &FaultProxyHandle) {
    proxy.set_refuse(true);
    proxy.reset_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_means_503_never_202_and_its_queue_survives_a_restart() {
    let mut broker = tokio::task::block_in_place(RabbitMq::start);
    let redis = durable_redis();
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let proxy = FaultProxy::start(mock.addr()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (node, url) = start_node(&broker, &redis, proxy.addr(), dir.path(), |_| {}).await;

    cut_path(&proxy).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(accepted_id(&defer(&url, &format!("b-{i}"), &[]).await));
    }
    tokio::task::block_in_place(|| broker.stop());
    let started = Instant::now();
    let r = defer(&url, "b-refused", &[]).await;
    r.assert_gateway_error(503, "overloaded_error");
    assert!(r.text().contains("NOT queued"), "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refused within the confirm timeout"
    );
    // A broker down is a warning, not a failure (the path, cut here, fails readiness
    // on its own account).
    let ready = get(&format!("http://{}/readyz", node.admin_addr()), &[])
        .await
        .json();
    let check = &ready["checks"]["deferred:queue"][0];
    assert_eq!(check["status"], "warn", "{ready}");
    assert!(
        check["observedValue"]
            .as_str()
            .unwrap()
            .contains("rabbitmq unreachable"),
        "{ready}"
    );

    tokio::task::block_in_place(|| broker.start_again());
    // Publishing works again once the node has reconnected.
    let mut again = None;
    for _ in 0..100 {
        let r = defer(&url, "b-after", &[]).await;
        if r.status == StatusCode::ACCEPTED {
            again = Some(accepted_id(&r));
            break;
        }
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ids.push(again.expect("deferral works again within 20 s of the broker's return"));
    proxy.set_refuse(false);
    for id in &ids {
        let done = settled(&url, id, Duration::from_secs(60)).await;
        assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    }
    for i in 0..3 {
        assert_eq!(
            received(&mock, &format!("b-{i}")),
            1,
            "queued before the stop, delivered once"
        );
    }
    assert_eq!(
        received(&mock, "b-refused"),
        0,
        "the refused one was never queued"
    );
    node.drain().await;
}

/// A broker that goes silent (SIGSTOP: its TCP connections stay open) is noticed at
/// the first unconfirmed publish: 503, `/readyz` warns at once, and the refused
/// request is never sent, even when the broker later reads the publish it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_warns_at_the_first_unconfirmed_publish_and_recovers() {
    let broker = tokio::task::block_in_place(RabbitMq::start);
    let redis = durable_redis();
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (node, url) = start_node(&broker, &redis, mock.addr(), dir.path(), |raw| {
        raw.deferred.confirm_timeout = Duration::from_secs(1);
    })
    .await;
    let readyz = format!("http://{}/readyz", node.admin_addr());
    let queue_check = || async {
        let ready = get(&readyz, &[]).await.json();
        ready["checks"]["deferred:queue"][0].clone()
    };
    let first = accepted_id(&defer(&url, "s-before", &[]).await);
    assert_eq!(queue_check().await["status"], "pass");

    broker.freeze();
    let r = defer(&url, "s-refused", &[]).await;
    r.assert_gateway_error(503, "overloaded_error");
    assert!(r.text().contains("did not confirm"), "{}", r.text());
    let check = queue_check().await;
    assert_eq!(check["status"], "warn", "{check}");
    assert!(
        check["observedValue"]
            .as_str()
            .unwrap()
            .contains("rabbitmq unreachable"),
        "{check}"
    );

    broker.thaw();
    let mut again = None;
    for _ in 0..100 {
        let r = defer(&url, "s-after", &[]).await;
        if r.status == StatusCode::ACCEPTED {
            again = Some(accepted_id(&r));
            break;
        }
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let again = again.expect("deferral works again within 20 s of the broker's return");
    assert_eq!(queue_check().await["status"], "pass");
    for id in [&first, &again] {
        let done = settled(&url, id, Duration::from_secs(30)).await;
        assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    }
    assert_eq!(
        received(&mock, "s-refused"),
        0,
        "a 503 said NOT queued: never sent"
    );
    node.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_keeps_results_and_while_down_deferral_is_refused() {
    let broker = tokio::task::block_in_place(RabbitMq::start);
    let mut redis = durable_redis();
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (node, url) = start_node(&broker, &redis, mock.addr(), dir.path(), |_| {}).await;

    let id = accepted_id(&defer(&url, "r-1", &[]).await);
    let first = settled(&url, &id, Duration::from_secs(30)).await;
    assert_eq!(first.status, StatusCode::OK);

    redis.kill();
    let r = defer(&url, "r-refused", &[]).await;
    r.assert_gateway_error(503, "overloaded_error");
    assert!(r.text().contains("NOT queued"), "{}", r.text());
    result(&url, &id)
        .await
        .assert_gateway_error(503, "overloaded_error");

    redis.restart();
    let mut back = None;
    for _ in 0..100 {
        let r = result(&url, &id).await;
        if r.status == StatusCode::OK {
            back = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back = back.expect("the result is readable again after Redis restarted");
    assert_eq!(back.body, first.body, "the stored result survived (AOF)");
    assert_eq!(received(&mock, "r-refused"), 0);
    node.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_duplicate_delivery_is_acked_without_sending() {
    let broker = tokio::task::block_in_place(RabbitMq::start);
    let redis = durable_redis();
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (node, url) = start_node(&broker, &redis, mock.addr(), dir.path(), |_| {}).await;

    let id = accepted_id(&defer(&url, "d-1", &[]).await);
    assert_eq!(
        settled(&url, &id, Duration::from_secs(30)).await.status,
        StatusCode::OK
    );

    // The same id published again, as a broker redelivery or a republish would.
    use strait_node::defer::{queue::Queue, DeferredId, Envelope, EnvelopeHead};
    let mut raw = RawConfig::default();
    raw.deferred.amqp_url = Some(broker.url());
    raw.deferred.redis = Some(redis_url(&redis));
    let cfg = raw
        .validate(vec![Secret::new("sk-x")], vec![Secret::new("c")])
        .unwrap();
    let queue =
        strait_node::defer::amqp::AmqpQueue::connect(&broker.url(), "default", &cfg.deferred)
            .await
            .unwrap();
    let env = Envelope {
        head: EnvelopeHead {
            id: DeferredId::parse(&id).unwrap(),
            owner: "key-1".into(),
            path: "/v1/messages".into(),
            anthropic_version: Some("2023-06-01".into()),
            anthropic_beta: None,
            stream: false,
            model: Some("claude-sonnet-4-5".into()),
            queued_at_ms: strait_node::defer::now_ms(),
        },
        body: bytes::Bytes::from(marked("d-1", false).to_string()),
    };
    let mut published = false;
    for _ in 0..50 {
        if queue.publish(&env).await.is_ok() {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(published, "the test's own publish is confirmed");
    let metrics_url = format!("http://{}/metrics", node.admin_addr());
    eventually(
        "the duplicate is skipped",
        Duration::from_secs(20),
        async || {
            get(&metrics_url, &[])
                .await
                .text()
                .contains("strait_deferred_redeliveries_total{action=\"skipped\"} 1")
        },
    )
    .await;
    assert_eq!(received(&mock, "d-1"), 1, "sent upstream once");
    node.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_dead_letters_after_the_delivery_limit_and_get_says_why() {
    let broker = tokio::task::block_in_place(RabbitMq::start);
    let redis = durable_redis();
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    for key in UPSTREAM_KEYS {
        mock.set_key_fault(key, Fault::overloaded());
    }
    let dir = tempfile::tempdir().unwrap();
    let (node, url) = start_node(&broker, &redis, mock.addr(), dir.path(), |raw| {
        raw.deferred.delivery_limit = 1;
        raw.upstream.max_attempts = 1;
    })
    .await;
    let id = accepted_id(&defer(&url, "dl-1", &[]).await);
    let r = settled(&url, &id, Duration::from_secs(60)).await;
    r.assert_gateway_error(502, "api_error");
    assert_eq!(r.header("x-strait-deferred-status"), Some("dead_lettered"));
    assert!(r.text().contains("529"), "{}", r.text());
    assert_eq!(
        received(&mock, "dl-1"),
        2,
        "delivered twice (limit 1), then dead"
    );
    let metrics = get(&format!("http://{}/metrics", node.admin_addr()), &[])
        .await
        .text();
    assert!(
        metrics.contains("strait_deferred_dead_lettered_total 1"),
        "{metrics}"
    );
    node.drain().await;
}

/// A node process on the broker and Redis, with `extra` arguments.
fn node_process(
    broker: &RabbitMq,
    redis: &RedisServer,
    upstream: &str,
    dir: &Path,
    extra: &[&str],
) -> NodeProcess {
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        format!(
            "[deferred]\nredis = \"{}\"\nclaim_lease = \"2s\"\nconfirm_timeout = \"2s\"\n",
            redis_url(redis)
        ),
    )
    .unwrap();
    let mut args = vec![
        "--config".to_string(),
        path.to_str().unwrap().to_string(),
        "--upstream".into(),
        upstream.into(),
        "--amqp".into(),
        broker.url(),
        "--state-dir".into(),
        dir.to_str().unwrap().to_string(),
        "--no-access-log".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    NodeProcess::spawn(
        &args,
        &[
            ("STRAIT_UPSTREAM_KEYS", &UPSTREAM_KEYS.join(",")),
            ("STRAIT_CLIENT_KEYS", CLIENT_KEY),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_claim_and_send_the_next_node_delivers_once() {
    let broker = tokio::task::block_in_place(RabbitMq::start);
    let redis = durable_redis();
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One request a minute: the direct request takes it, so the delivery claims the
    // id and then waits for its limits (claimed, not sent) when the node is killed.
    let mut first = tokio::task::block_in_place(|| {
        node_process(
            &broker,
            &redis,
            mock.url(),
            dir.path(),
            &["--default-limits", "rpm=1"],
        )
    });
    let r = post_json(
        &format!("{}/v1/messages", first.url()),
        &auth(CLIENT_KEY),
        &message_body(false),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let id = accepted_id(&defer(&first.url(), "k-claim", &[]).await);
    eventually(
        "the delivery holds the id",
        Duration::from_secs(20),
        async || result(&first.url(), &id).await.json()["status"] == "delivering",
    )
    .await;
    first.signal("KILL");
    first.wait(Duration::from_secs(5));
    assert_eq!(received(&mock, "k-claim"), 0);

    let dir2 = tempfile::tempdir().unwrap();
    let second =
        tokio::task::block_in_place(|| node_process(&broker, &redis, mock.url(), dir2.path(), &[]));
    let done = settled(&second.url(), &id, Duration::from_secs(60)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    assert_eq!(received(&mock, "k-claim"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_send_and_ack_ends_outcome_unknown_and_is_never_resent() {
    let broker = tokio::task::block_in_place(RabbitMq::start);
    let redis = durable_redis();
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    for key in UPSTREAM_KEYS {
        mock.set_key_fault(key, Fault::latency(Duration::from_secs(4)));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut first =
        tokio::task::block_in_place(|| node_process(&broker, &redis, mock.url(), dir.path(), &[]));
    let id = accepted_id(&defer(&first.url(), "k-sent", &[]).await);
    eventually(
        "the upstream has the request",
        Duration::from_secs(20),
        async || received(&mock, "k-sent") == 1,
    )
    .await;
    first.signal("KILL");
    first.wait(Duration::from_secs(5));

    let dir2 = tempfile::tempdir().unwrap();
    let second =
        tokio::task::block_in_place(|| node_process(&broker, &redis, mock.url(), dir2.path(), &[]));
    let r = settled(&second.url(), &id, Duration::from_secs(60)).await;
    r.assert_gateway_error(502, "api_error");
    assert_eq!(
        r.header("x-strait-deferred-status"),
        Some("outcome_unknown")
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(received(&mock, "k-sent"), 1, "never resent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_publish_and_confirm_the_client_never_saw_a_202() {
    let broker = tokio::task::block_in_place(RabbitMq::start);
    let redis = durable_redis();
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut first =
        tokio::task::block_in_place(|| node_process(&broker, &redis, mock.url(), dir.path(), &[]));
    let url = first.url();
    // The broker stops answering: the publish waits for a confirm that does not come.
    let pid = broker.pid().expect("broker running").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let client = tokio::spawn(async move {
        let mut h = auth(CLIENT_KEY).to_vec();
        h.extend([
            ("strait-defer", "always"),
            ("idempotency-key", "k-confirm"),
            ("content-type", "application/json"),
        ]);
        let mut req = http::Request::builder()
            .method(Method::POST)
            .uri(format!("{url}/v1/messages"));
        for (k, v) in &h {
            req = req.header(*k, *v);
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from(
                marked("k-confirm", false).to_string(),
            )))
            .unwrap();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(hyper_util::client::legacy::connect::HttpConnector::new());
        client.request(req).await.map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    first.signal("KILL");
    first.wait(Duration::from_secs(5));
    let seen = client.await.unwrap();
    assert!(
        seen.is_err() || seen.as_ref().is_ok_and(|s| *s != StatusCode::ACCEPTED),
        "no 202: {seen:?}"
    );
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());

    // The client tries again with its idempotency key: one request upstream, at most.
    let dir2 = tempfile::tempdir().unwrap();
    let second =
        tokio::task::block_in_place(|| node_process(&broker, &redis, mock.url(), dir2.path(), &[]));
    let mut id = None;
    for _ in 0..100 {
        let r = defer(
            &second.url(),
            "k-confirm",
            &[("idempotency-key", "k-confirm")],
        )
        .await;
        if r.status == StatusCode::ACCEPTED {
            id = Some(accepted_id(&r));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let id = id.expect("accepted on retry");
    let done = settled(&second.url(), &id, Duration::from_secs(60)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(received(&mock, "k-confirm"), 1, "delivered once");
}

/// One client request's fate in the count.
#[derive(Default, Clone)]
struct Fate {
    id: Option<String>,
    tries: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jepsen_count_over_2000_deferred_requests_across_node_kills_and_a_broker_restart() {
    // 2,000 in the suite; `STRAIT_JEPSEN_REQUESTS=10000` for the bench run.
    let requests: usize = std::env::var("STRAIT_JEPSEN_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    const CLIENTS: usize = 16;
    let total = Instant::now();
    let mut broker = tokio::task::block_in_place(RabbitMq::start);
    let redis = durable_redis();
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<NodeProcess> = tokio::task::block_in_place(|| {
        dirs.iter()
            .map(|d| node_process(&broker, &redis, mock.url(), d.path(), &[]))
            .collect()
    });
    let urls = Arc::new(Mutex::new(
        nodes.iter().map(|n| n.url()).collect::<Vec<_>>(),
    ));
    let fates = Arc::new(Mutex::new(vec![Fate::default(); requests]));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    // Clients: each request has its idempotency key; a connection error or a 503 is
    // retried with the same key on the other node, as a careful client would.
    let mut workers = Vec::new();
    for c in 0..CLIENTS {
        let (urls, fates, next, sent) = (urls.clone(), fates.clone(), next.clone(), sent.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    return;
                }
                let key = format!("j-{i}");
                let mut tries = 0;
                let id = loop {
                    tries += 1;
                    let url = {
                        let u = urls.lock().unwrap();
                        u[(c + tries as usize) % u.len()].clone()
                    };
                    if let Some(r) = try_defer(&url, &key).await {
                        if r.0 == StatusCode::ACCEPTED {
                            break r.1;
                        }
                        assert_eq!(
                            r.0,
                            StatusCode::SERVICE_UNAVAILABLE,
                            "only honest refusals: {}",
                            r.1.unwrap_or_default()
                        );
                    }
                    if tries > 200 {
                        break None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                fates.lock().unwrap()[i] = Fate { id, tries };
            }
        }));
    }

    // The faults, as the requests go: node 1 killed and restarted, the broker
    // restarted, node 2 killed and restarted.
    let wait_sent = |n: usize| {
        let sent = sent.clone();
        async move {
            while sent.load(std::sync::atomic::Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let mut kills = 0;
    for (at, what) in [
        (requests / 4, "node0"),
        (requests / 2, "broker"),
        (3 * requests / 4, "node1"),
    ] {
        wait_sent(at).await;
        match what {
            "broker" => tokio::task::block_in_place(|| broker.restart()),
            node => {
                let n: usize = node[4..].parse().unwrap();
                nodes[n].signal("KILL");
                nodes[n].wait(Duration::from_secs(5));
                kills += 1;
                let fresh = tokio::task::block_in_place(|| {
                    node_process(&broker, &redis, mock.url(), dirs[n].path(), &[])
                });
                urls.lock().unwrap()[n] = fresh.url();
                nodes[n] = fresh;
            }
        }
    }
    for w in workers {
        w.await.unwrap();
    }
    let fates = fates.lock().unwrap().clone();

    // Every acknowledged id must end; then count.
    let url = nodes[0].url();
    let (mut delivered, mut unknown, mut dead, mut lost, mut false_202) = (0, 0, 0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(90);
    for f in &fates {
        let Some(id) = &f.id else { continue };
        loop {
            let r = result(&url, id).await;
            match (r.status, r.header("x-strait-deferred-status")) {
                (StatusCode::OK, _) => delivered += 1,
                (StatusCode::ACCEPTED, _) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                (StatusCode::ACCEPTED, _) => lost += 1,
                (_, Some("outcome_unknown")) => unknown += 1,
                (_, Some("dead_lettered")) => dead += 1,
                (StatusCode::NOT_FOUND, _) => false_202 += 1,
                (s, _) => panic!("{id}: unexpected {s}: {}", r.text()),
            }
            break;
        }
    }
    let counts = received_counts(&mock);
    let duplicated = counts
        .iter()
        .filter(|(k, n)| k.starts_with("j-") && **n > 1)
        .count();
    let acked = fates.iter().filter(|f| f.id.is_some()).count();
    let retried = fates.iter().filter(|f| f.tries > 1).count();
    let table = format!(
        "| attempted | acknowledged (202) | retried by the client | delivered | outcome unknown | dead-lettered | lost | duplicated upstream | false 202 |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n\
         | {requests} | {acked} | {retried} | {delivered} | {unknown} | {dead} | {lost} | {duplicated} | {false_202} |\n\
         faults: {kills} node kills (SIGKILL, then restarted), 1 broker restart; {:.1} s in all",
        total.elapsed().as_secs_f64()
    );
    println!("{table}");
    assert_eq!(
        acked, requests,
        "every request was acknowledged in the end:\n{table}"
    );
    assert_eq!(lost, 0, "{table}");
    assert_eq!(duplicated, 0, "{table}");
    assert_eq!(false_202, 0, "{table}");
    assert_eq!(dead, 0, "{table}");
    // Only a delivery in flight when its node was killed can end unknown: at most
    // the prefetch of each killed node.
    assert!(unknown <= kills * 8, "{table}");
    assert_eq!(delivered + unknown, acked, "{table}");
}

/// One deferral attempt: the status and, for a 202, the id; `None` for a transport
/// failure (a killed node).
async fn try_defer(url: &str, key: &str) -> Option<(StatusCode, Option<String>)> {
    let body = marked(key, false).to_string();
    let mut req = http::Request::builder()
        .method(Method::POST)
        .uri(format!("{url}/v1/messages"))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .header("strait-defer", "always")
        .header("idempotency-key", key);
    req = req.header("connection", "close");
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .ok()?
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Some((
        status,
        if status == StatusCode::ACCEPTED {
            v["id"].as_str().map(String::from)
        } else {
            Some(String::from_utf8_lossy(&body).into_owned())
        },
    ))
}
