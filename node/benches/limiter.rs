//! Limiter benchmark (`cargo bench -p strait-node --bench limiter`): hot-path decision
//! cost per mode, Redis round trips per request in leased mode, and admitted-vs-limit
//! for several node counts and sync intervals, against a real redis-server.

#[allow(dead_code)]
#[path = "../tests/common/redis.rs"]
mod redis_server;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use strait_node::config::{RawConfig, Secret};
use strait_node::limits::local::LocalLimiter;
use strait_node::limits::{LimitSpec, Limiter, Permit, Reservation, Subject};

const KEY: &str = "key-1";

/// One simulated node: a limiter of its own (own node id, leases, background tasks).
async fn node(redis: &RedisServer, mode: &str, limits: &str, sync: &str, nodes: u32) -> Limiter {
    let toml = format!(
        "[redis]\nurl = \"{}\"\nmode = \"{mode}\"\nsync_interval = \"{sync}\"\nexpected_nodes = {nodes}\nop_timeout = \"2s\"\n",
        redis.url()
    );
    let mut raw = RawConfig::from_toml(&toml).unwrap();
    let spec = LimitSpec::parse(limits).unwrap();
    raw.limits.default.rpm = spec.rpm;
    raw.limits.default.otpm = spec.otpm;
    raw.limits.default.concurrency = spec.concurrency;
    let config = raw
        .validate(
            vec![Secret::new("sk-bench")],
            vec![Secret::new("client-bench")],
        )
        .unwrap();
    let limiter = Limiter::new(&config, &prometheus::Registry::new()).unwrap();
    limiter.connect().await;
    limiter
}

async fn decide(l: &Limiter, res: Reservation) -> Option<Permit> {
    l.admit(KEY, res).await.ok().flatten().map(|a| a.permit)
}

fn local_ns(iters: u32) -> f64 {
    let l = Arc::new(LocalLimiter::new(vec![LimitSpec {
        rpm: Some(u64::MAX / 2),
        itpm: Some(u64::MAX / 2),
        otpm: Some(u64::MAX / 2),
        concurrency: Some(1 << 40),
        daily_tokens: None,
    }]));
    let s = Subject {
        scopes: [Some(0), None],
    };
    let res = Reservation {
        input: 100,
        output: 400,
    };
    let t = Instant::now();
    for _ in 0..iters {
        let (data, _) = l.admit(s, res).unwrap();
        drop(Permit::new(data, l.clone()));
    }
    t.elapsed().as_nanos() as f64 / f64::from(iters)
}

async fn redis_ns(redis: &RedisServer, mode: &str, iters: u32) -> (f64, f64) {
    // Limits far above the load: every decision after the first lease is a hot-path one.
    let l = node(
        redis,
        mode,
        "rpm=1000000000,otpm=1000000000000,concurrency=1000000",
        "100ms",
        1,
    )
    .await;
    let res = Reservation {
        input: 100,
        output: 400,
    };
    for _ in 0..100 {
        drop(decide(&l, res).await);
    }
    let rt0 = l.redis_round_trips().unwrap();
    let t = Instant::now();
    for _ in 0..iters {
        let p = decide(&l, res).await.expect("admitted");
        drop(p);
    }
    let ns = t.elapsed().as_nanos() as f64 / f64::from(iters);
    let rts = (l.redis_round_trips().unwrap() - rt0) as f64 / f64::from(iters);
    (ns, rts)
}

/// `total` requests (about 1000 per second) from 64 clients spread over `nodes` limiters sharing a
/// limit of `limit` per minute. `skew`: node 0 gets half of all traffic, and the last
/// node stops getting any after the first quarter (its lease sits idle).
async fn overshoot(
    redis: &RedisServer,
    nodes: u32,
    sync: &str,
    limit: u64,
    total: usize,
    skew: bool,
) -> (usize, f64) {
    redis.cmd(&["FLUSHALL"]);
    let mut ls = Vec::new();
    for _ in 0..nodes {
        ls.push(Arc::new(
            node(redis, "leased", &format!("rpm={limit}"), sync, nodes).await,
        ));
    }
    let rt0: u64 = ls.iter().map(|l| l.redis_round_trips().unwrap()).sum();
    let next = Arc::new(AtomicUsize::new(0));
    let admitted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (ls, next, admitted) = (ls.clone(), next.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let n = ls.len();
                let target = if !skew || n == 1 {
                    i % n
                } else if i % 2 == 0 {
                    0
                } else if i < total / 4 {
                    i / 2 % n
                } else {
                    i / 2 % (n - 1)
                };
                if decide(&ls[target], Reservation::default()).await.is_some() {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
                // Steady traffic, not one burst: 64 clients each pausing 64 ms make about
                // 1000 requests per second, so a run spans several sync intervals.
                tokio::time::sleep(Duration::from_millis(64)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rts: u64 = ls
        .iter()
        .map(|l| l.redis_round_trips().unwrap())
        .sum::<u64>()
        - rt0;
    (admitted.load(Ordering::Relaxed), rts as f64 / total as f64)
}

/// The common blog-post limiter: LLEN, then LPUSH/LTRIM/EXPIRE in a pipeline.
async fn blog_limiter(redis: &RedisServer, clients: usize, total: usize, limit: i64) -> usize {
    redis.cmd(&["FLUSHALL"]);
    let client = redis::Client::open(redis.url()).unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let admitted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let (next, admitted) = (next.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let len: i64 = redis::cmd("LLEN")
                    .arg("blog")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if len < limit {
                    let _: () = redis::pipe()
                        .cmd("LPUSH")
                        .arg("blog")
                        .arg(1)
                        .ignore()
                        .cmd("LTRIM")
                        .arg("blog")
                        .arg(0)
                        .arg(limit - 1)
                        .ignore()
                        .cmd("EXPIRE")
                        .arg("blog")
                        .arg(60)
                        .ignore()
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    admitted.load(Ordering::Relaxed)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let redis = RedisServer::start();
        println!("## Decision cost (one client, sequential; admit + settle)");
        println!("| mode | ns/decision | Redis round trips/decision |");
        println!("|---|---|---|");
        println!("| in process (no Redis) | {:.0} | 0 |", local_ns(1_000_000));
        let (ns, rt) = redis_ns(&redis, "leased", 200_000).await;
        println!("| leased (hot path) | {ns:.0} | {rt:.5} |");
        let (ns, rt) = redis_ns(&redis, "exact", 5_000).await;
        println!("| exact | {ns:.0} | {rt:.2} |");

        println!("\n## Leased mode: admitted against a limit of 1000/min, 64 clients, 3000 requests over about 3 s");
        println!("| nodes | sync interval | traffic | admitted | error vs limit | Redis round trips/request |");
        println!("|---|---|---|---|---|---|");
        for nodes in [1u32, 3, 5] {
            for sync in ["10ms", "100ms", "1s"] {
                for skew in [false, true] {
                    if skew && nodes == 1 {
                        continue;
                    }
                    let (adm, rts) = overshoot(&redis, nodes, sync, 1000, 3000, skew).await;
                    let err = (adm as f64 - 1000.0) / 10.0;
                    println!(
                        "| {nodes} | {sync} | {} | {adm} | {err:+.1}% | {rts:.3} |",
                        if skew { "skewed, one node goes idle" } else { "even" }
                    );
                }
            }
        }

        println!("\n## Reference: LLEN + pipelined LPUSH/LTRIM/EXPIRE, limit 100");
        for clients in [32, 64] {
            let mut runs = Vec::new();
            for _ in 0..5 {
                runs.push(blog_limiter(&redis, clients, 400, 100).await);
            }
            println!("{clients} concurrent clients, 5 runs: admitted {runs:?}");
        }
    });
}
