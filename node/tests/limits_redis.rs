//! Limits shared through a real Redis (started per test on a free port) by several real
//! `strait-node` processes: exact and leased admission under 64 concurrent clients,
//! token reservations and refunds, crash-safe concurrency slots, and a Redis outage.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::NodeProcess;
use common::redis::{RedisCluster, RedisServer};
use common::{eventually, get, post_json, Resp};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use strait_chaos::mock::{MockConfig, MockHandle, MockUpstream};

const UPSTREAM_KEY: &str = "sk-ant-upstream-limits-01";
/// The guarantees hold while Redis answers within `op_timeout`; past it a node degrades
/// to its safe share. Tests share two cores with parallel node processes and debug
/// builds, so they allow Redis more time than the production default (250 ms).
const SLOW_MACHINE: &str = "op_timeout = \"2s\"";

async fn mock() -> MockHandle {
    MockUpstream::start(MockConfig {
        record: false,
        ..Default::default()
    })
    .await
    .expect("mock starts")
}

/// Starts `n` node processes sharing one Redis. `extra` is appended to the `[redis]` table.
fn nodes(
    n: usize,
    mock: &MockHandle,
    redis: &RedisServer,
    mode: &str,
    limits: &str,
    extra: &str,
    keys: &str,
) -> (Vec<NodeProcess>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        format!(
            "[redis]\nurl = \"{}\"\nmode = \"{mode}\"\n{extra}\n",
            redis.url()
        ),
    )
    .unwrap();
    let path = path.to_str().unwrap().to_string();
    let procs = (0..n)
        .map(|_| {
            NodeProcess::spawn(
                &[
                    "--config",
                    &path,
                    "--upstream",
                    mock.url(),
                    "--default-limits",
                    limits,
                    "--no-access-log",
                    "--workers",
                    "1",
                ],
                &[
                    ("STRAIT_UPSTREAM_KEYS", UPSTREAM_KEY),
                    ("STRAIT_CLIENT_KEYS", keys),
                ],
            )
        })
        .collect();
    (procs, dir)
}

fn msg(max_tokens: u64, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": "Hi"}],
    })
}

#[derive(Debug, Default)]
struct Counts {
    ok: usize,
    limited: usize,
    other: Vec<String>,
}

fn classify(c: &mut Counts, r: &Resp) {
    match r.status.as_u16() {
        200 => c.ok += 1,
        429 if r.header("x-strait-ratelimited") == Some("gateway") => c.limited += 1,
        s => c.other.push(format!("{s}: {}", r.text())),
    }
}

/// `total` requests from `clients` concurrent clients, round-robin over the nodes.
async fn burst(
    urls: &[String],
    key: &str,
    total: usize,
    clients: usize,
    max_tokens: u64,
    stream: bool,
    pacing: Option<&'static str>,
) -> Counts {
    let next = Arc::new(AtomicUsize::new(0));
    let urls = Arc::new(urls.to_vec());
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, urls, key) = (next.clone(), urls.clone(), key.to_string());
        tasks.push(tokio::spawn(async move {
            let mut c = Counts::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return c;
                }
                let url = format!("{}/v1/messages", urls[i % urls.len()]);
                let mut h = vec![
                    ("x-api-key", key.as_str()),
                    ("anthropic-version", "2023-06-01"),
                ];
                if let Some(p) = pacing {
                    h.push(("x-mock-pacing", p));
                }
                classify(&mut c, &post_json(&url, &h, &msg(max_tokens, stream)).await);
            }
        }));
    }
    let mut all = Counts::default();
    for t in tasks {
        let c = t.await.unwrap();
        all.ok += c.ok;
        all.limited += c.limited;
        all.other.extend(c.other);
    }
    all
}

fn urls(nodes: &[NodeProcess]) -> Vec<String> {
    nodes.iter().map(NodeProcess::url).collect()
}

/// Sum of a metric family's samples (all label sets) on one node.
async fn metric_sum(node: &NodeProcess, name: &str) -> f64 {
    let text = get(&format!("http://{}/metrics", node.admin), &[])
        .await
        .text();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn readiness(node: &NodeProcess) -> serde_json::Value {
    get(&format!("http://{}/readyz", node.admin), &[])
        .await
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_mode_admits_exactly_the_limit_across_three_nodes() {
    let redis = RedisServer::start();
    let mock = mock().await;
    let (nodes, _dir) = nodes(
        3,
        &mock,
        &redis,
        "exact",
        "rpm=100",
        SLOW_MACHINE,
        "run-1,run-2,run-3",
    );
    // Three runs, each with a fresh key (its own window): exactly 100, every time.
    for key in ["run-1", "run-2", "run-3"] {
        let c = burst(&urls(&nodes), key, 250, 64, 16, false, None).await;
        assert!(
            c.other.is_empty(),
            "only 200 and gateway 429: {:?}",
            c.other
        );
        let logs: Vec<String> = nodes
            .iter()
            .flat_map(|n| {
                n.log()
                    .lines()
                    .filter(|l| l.contains("limiter"))
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            c.ok, 100,
            "exact mode admits exactly the limit ({c:?}); {logs:?}"
        );
        assert_eq!(c.limited, 150);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leased_mode_admits_within_two_percent_without_a_round_trip_per_request() {
    let redis = RedisServer::start();
    let mock = mock().await;
    let (nodes, _dir) = nodes(
        3,
        &mock,
        &redis,
        "leased",
        "rpm=100",
        SLOW_MACHINE,
        "run-1,run-2,run-3",
    );
    let mut total = 0;
    for key in ["run-1", "run-2", "run-3"] {
        let c = burst(&urls(&nodes), key, 250, 64, 16, false, None).await;
        assert!(
            c.other.is_empty(),
            "only 200 and gateway 429: {:?}",
            c.other
        );
        println!(
            "leased mode, 3 nodes, 64 clients, limit 100: admitted {}",
            c.ok
        );
        assert!(
            (98..=100).contains(&c.ok),
            "within 2% of the limit, never over: {c:?}"
        );
        total += c.ok + c.limited;
    }
    let mut ops = 0.0;
    for n in &nodes {
        ops += metric_sum(n, "strait_limiter_redis_ops_total").await
            - metric_sum(n, "strait_limiter_redis_ops_total{op=\"ping\"}").await;
    }
    println!("leased mode: {ops} Redis round trips (without health pings) for {total} requests = {:.3} per request", ops / total as f64);
    assert!(
        ops / (total as f64) < 0.5,
        "leased mode makes far fewer than one round trip per request ({ops} for {total})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_cannot_exceed_otpm_and_refunds_restore_it() {
    for mode in ["exact", "leased"] {
        let redis = RedisServer::start();
        let mock = mock().await;
        let (nodes, _dir) = nodes(3, &mock, &redis, mode, "otpm=1000", SLOW_MACHINE, "tokens");
        let urls = urls(&nodes);
        // Six streams reserving 400 output tokens each, held for ~0.8 s: two fit in 1000.
        let c = burst(
            &urls,
            "tokens",
            6,
            6,
            400,
            true,
            Some("interval-ms=100,tokens=8"),
        )
        .await;
        assert!(c.other.is_empty(), "{mode}: {:?}", c.other);
        assert_eq!(
            (c.ok, c.limited),
            (2, 4),
            "{mode}: reservations never jointly exceed the limit"
        );
        // Each used 8 of its 400: the refunds (via the lease sync in leased mode) make
        // room for two more, which would not fit (200 left) without them.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let c = burst(&urls, "tokens", 2, 2, 400, false, None).await;
        assert_eq!(c.ok, 2, "{mode}: refunds restored the budget: {c:?}");
    }
}

/// Starts a streaming request and returns once its headers arrived, keeping the body open.
async fn open_stream(url: &str, key: &str) -> (u16, hyper::body::Incoming) {
    let req = http::Request::post(format!("{url}/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .header("x-mock-pacing", "interval-ms=200,tokens=200")
        .body(Full::new(Bytes::from(msg(400, true).to_string())))
        .unwrap();
    let client = Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let resp = client.request(req).await.unwrap();
    (resp.status().as_u16(), resp.into_body())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slots_held_by_a_killed_node_come_back_within_the_slot_ttl() {
    for mode in ["exact", "leased"] {
        let redis = RedisServer::start();
        let mock = mock().await;
        let (mut nodes, _dir) = nodes(
            2,
            &mock,
            &redis,
            mode,
            "concurrency=2",
            "slot_ttl = \"2s\"",
            "slots",
        );
        let (a, b) = (nodes[0].url(), nodes[1].url());
        let s1 = open_stream(&a, "slots").await;
        let s2 = open_stream(&a, "slots").await;
        assert_eq!((s1.0, s2.0), (200, 200), "{mode}");
        let r = post_json(
            &format!("{b}/v1/messages"),
            &[("x-api-key", "slots"), ("anthropic-version", "2023-06-01")],
            &msg(16, false),
        )
        .await;
        assert_eq!(
            r.status,
            429,
            "{mode}: both slots are taken on node A: {}",
            r.text()
        );
        assert_eq!(
            r.header("x-strait-ratelimit-dimension"),
            Some("concurrency")
        );

        nodes[0].proc.child.kill().unwrap(); // SIGKILL: no chance to release anything
        let _ = nodes[0].proc.child.wait();
        let killed = Instant::now();
        let took = eventually(
            &format!("{mode}: node A's slots expire"),
            Duration::from_secs(5),
            async || {
                post_json(
                    &format!("{b}/v1/messages"),
                    &[("x-api-key", "slots"), ("anthropic-version", "2023-06-01")],
                    &msg(16, false),
                )
                .await
                .status
                    == 200
            },
        )
        .await;
        println!(
            "{mode}: slots of a killed node came back after {:?}",
            killed.elapsed()
        );
        assert!(
            took <= Duration::from_millis(3500),
            "{mode}: within slot_ttl (2 s) plus a heartbeat: {took:?}"
        );
        drop((s1, s2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_degrades_to_safe_shares_and_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let mock = mock().await;
    let (nodes, _dir) = nodes(
        2,
        &mock,
        &redis,
        "leased",
        "rpm=40",
        "expected_nodes = 2",
        "fg,bg",
    );
    let (a, b) = (nodes[0].url(), nodes[1].url());
    assert_eq!(readiness(&nodes[0]).await["status"], "pass");
    assert_eq!(
        readiness(&nodes[0]).await["checks"]["redis:limiter"][0]["status"],
        "pass"
    );

    // Background traffic on another key runs through the whole outage: never an error.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bg = tokio::spawn({
        let (stop, urls) = (stop.clone(), vec![a.clone(), b.clone()]);
        async move {
            let mut c = Counts::default();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = post_json(
                    &format!("{}/v1/messages", urls[i % 2]),
                    &[("x-api-key", "bg"), ("anthropic-version", "2023-06-01")],
                    &msg(16, false),
                )
                .await;
                classify(&mut c, &r);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            c
        }
    });

    redis.kill();
    for n in &nodes {
        eventually("readiness turns warn", Duration::from_secs(4), async || {
            let r = readiness(n).await;
            r["status"] == "warn" && r["checks"]["redis:limiter"][0]["status"] == "warn"
        })
        .await;
        assert_eq!(metric_sum(n, "strait_limiter_degraded").await, 1.0);
    }
    // Each node now allows its safe share: 40 / 2 expected nodes = 20 per minute.
    let mut c = Counts::default();
    for _ in 0..30 {
        classify(
            &mut c,
            &post_json(
                &format!("{a}/v1/messages"),
                &[("x-api-key", "fg"), ("anthropic-version", "2023-06-01")],
                &msg(16, false),
            )
            .await,
        );
    }
    assert!(c.other.is_empty(), "{:?}", c.other);
    assert_eq!(c.ok, 20, "safe share on node A: {c:?}");

    redis.restart();
    for n in &nodes {
        eventually(
            "readiness back to pass",
            Duration::from_secs(5),
            async || readiness(n).await["status"] == "pass",
        )
        .await;
        assert_eq!(metric_sum(n, "strait_limiter_degraded").await, 0.0);
    }
    // Shared limits again (a fresh window in the restarted, empty Redis).
    let r = post_json(
        &format!("{b}/v1/messages"),
        &[("x-api-key", "fg"), ("anthropic-version", "2023-06-01")],
        &msg(16, false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("anthropic-ratelimit-requests-limit"), Some("40"));
    let keys = redis.cmd(&["KEYS", "strait:*"]);
    assert!(
        keys.contains("key-1"),
        "state is in Redis again, under the key's name: {keys}"
    );
    assert!(!keys.contains("fg"), "never under the key itself: {keys}");

    stop.store(true, Ordering::Relaxed);
    let bg = bg.await.unwrap();
    assert!(
        bg.other.is_empty(),
        "no request failed because Redis was down: {:?}",
        bg.other
    );
    assert!(bg.ok > 0);
}

fn hex(bytes: [u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_keeps_a_key_and_its_tenant_on_one_slot() {
    let cluster = RedisCluster::start(3);
    let mock = mock().await;
    let dir = tempfile::tempdir().unwrap();
    for mode in ["exact", "leased"] {
        let path = dir.path().join(format!("{mode}.toml"));
        let key = |name: &str, secret: &str| {
            format!(
                "[[auth.client_keys]]\nname = \"{name}\"\nsha256 = \"{}\"\ntenant = \"acme\"\n",
                hex(strait_node::config::hash_key(secret))
            )
        };
        std::fs::write(
            &path,
            format!(
                "[redis]\nurl = \"{}\"\ncluster = true\nmode = \"{mode}\"\nkey_prefix = \"{mode}\"\n{SLOW_MACHINE}\n\n[[tenants]]\nname = \"acme\"\nlimits = {{ rpm = 20 }}\n\n{}\n{}",
                cluster.urls(),
                key("alice", "cluster-key-a"),
                key("bob", "cluster-key-b"),
            ),
        )
        .unwrap();
        let path = path.to_str().unwrap().to_string();
        let nodes: Vec<NodeProcess> = (0..2)
            .map(|_| {
                NodeProcess::spawn(
                    &[
                        "--config",
                        &path,
                        "--upstream",
                        mock.url(),
                        "--no-access-log",
                        "--workers",
                        "1",
                    ],
                    &[("STRAIT_UPSTREAM_KEYS", UPSTREAM_KEY)],
                )
            })
            .collect();
        assert_eq!(
            readiness(&nodes[0]).await["checks"]["redis:limiter"][0]["status"],
            "pass",
            "{mode}: {}",
            nodes[0].log()
        );
        let a = burst(&urls(&nodes), "cluster-key-a", 15, 8, 16, false, None).await;
        let b = burst(&urls(&nodes), "cluster-key-b", 15, 8, 16, false, None).await;
        assert!(
            a.other.is_empty() && b.other.is_empty(),
            "{mode}: {:?} {:?}",
            a.other,
            b.other
        );
        // The tenant's 20 per minute, shared by both keys, across both nodes.
        assert_eq!(a.ok + b.ok, 20, "{mode}: {a:?} {b:?}");
        let r = post_json(
            &format!("{}/v1/messages", nodes[1].url()),
            &[
                ("x-api-key", "cluster-key-a"),
                ("anthropic-version", "2023-06-01"),
            ],
            &msg(16, false),
        )
        .await;
        assert_eq!(r.header("x-strait-ratelimit-scope"), Some("tenant"));
        // All of the tenant's state sits on one slot.
        let mut slots = std::collections::HashSet::new();
        for s in &cluster.servers {
            for k in s
                .cmd(&["KEYS", &format!("{mode}:*")])
                .lines()
                .filter(|k| !k.is_empty())
            {
                slots.insert(s.cmd(&["CLUSTER", "KEYSLOT", k]));
            }
        }
        assert_eq!(
            slots.len(),
            1,
            "{mode}: one hash slot for a tenant and its keys: {slots:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remaining_moves_with_every_request_in_both_modes() {
    let redis = RedisServer::start();
    let mock = mock().await;
    for (mode, key) in [("exact", "rem-exact"), ("leased", "rem-leased")] {
        // Both runs name their key key-1: a prefix per mode keeps their state apart.
        let extra = format!("{SLOW_MACHINE}\nkey_prefix = \"{mode}\"");
        let (nodes, _dir) = nodes(2, &mock, &redis, mode, "rpm=10", &extra, key);
        for (i, expect) in (5..10).rev().enumerate() {
            // Exact mode answers from Redis, so any node will do; a leased node counts
            // its own admissions against what it last saw of the rest of the cluster.
            let node = if mode == "exact" {
                &nodes[i % 2]
            } else {
                &nodes[0]
            };
            let r = post_json(
                &format!("{}/v1/messages", node.url()),
                &[("x-api-key", key), ("anthropic-version", "2023-06-01")],
                &msg(16, false),
            )
            .await;
            assert_eq!(r.status, 200, "{mode}: {}", r.text());
            assert_eq!(r.header("anthropic-ratelimit-requests-limit"), Some("10"));
            assert_eq!(
                r.header("anthropic-ratelimit-requests-remaining"),
                Some(expect.to_string().as_str()),
                "{mode}: request {i}"
            );
        }
    }
}

/// `/stats` reports a key's cluster-wide use from Redis (the dashboard's "closest to
/// their limits"), whichever node is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_report_cluster_wide_usage_read_from_redis() {
    let redis = RedisServer::start();
    let mock = mock().await;
    let (nodes, _dir) = nodes(
        2,
        &mock,
        &redis,
        "exact",
        "rpm=40",
        SLOW_MACHINE,
        "usage-key",
    );
    for i in 0..5 {
        let r = post_json(
            &format!("{}/v1/messages", nodes[i % 2].url()),
            &[
                ("x-api-key", "usage-key"),
                ("anthropic-version", "2023-06-01"),
            ],
            &msg(16, false),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for node in &nodes {
        let url = format!("http://{}/stats", node.admin);
        // The first ask starts the background read; it lands within a couple of seconds.
        let deadline = Instant::now() + Duration::from_secs(10);
        let used = loop {
            let r = get(&url, &[]).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let v = r.json();
            assert_eq!(v["limiter"]["backend"], "redis", "{v}");
            let scope = v["limiter"]["scopes"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["kind"] == "key"))
                .cloned()
                .unwrap_or_else(|| panic!("a limited key in {v}"));
            assert_eq!(scope["limits"]["requests"], 40, "{scope}");
            if let Some(used) = scope["used"]["requests"].as_u64() {
                break used;
            }
            assert!(
                Instant::now() < deadline,
                "no usage from Redis after 10 s: {scope}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(used, 5, "both nodes' requests, as Redis counts them");
    }
}
