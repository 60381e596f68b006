//! Cluster membership and live config against a real etcd (started here on free
//! ports) and real `strait-node` processes: registration and lease expiry after
//! kill -9, drain, config propagation to two nodes (and its latency), rejection of
//! invalid config, etcd restarts, restarts from the disk snapshot with etcd down,
//! and upstream keys never stored in clear.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use common::etcd::Etcd;
use common::process::NodeProcess;
use common::*;
use etcd_client::Client;
use strait_chaos::mock::{MockConfig, MockHandle, MockUpstream, Pacing};
use strait_node::config::hash_key;
use strait_node::schema::*;
use strait_node::secret::Kek;

const KEK_HEX: &str = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a7988";
/// The one upstream key the mock accepts; it reaches nodes only sealed, via etcd.
const SEALED_UPSTREAM: &str = "sk-ant-cluster-sealed-upstream-7777";
const LEASE_TTL: Duration = Duration::from_secs(3);

fn kek() -> Kek {
    Kek::parse(KEK_HEX).unwrap()
}

/// One etcd, one mock upstream (accepting only [`SEALED_UPSTREAM`]) and a scratch dir.
struct Cluster {
    etcd: Etcd,
    mock: MockHandle,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with(Pacing::default()).await
    }

    async fn start_with(pacing: Pacing) -> Cluster {
        let etcd = Etcd::start();
        let mock = MockUpstream::start(MockConfig {
            valid_keys: Some(vec![SEALED_UPSTREAM.into()]),
            pacing,
            ..MockConfig::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("node.toml"),
            format!("[cluster]\nlease_ttl = \"{}s\"\n", LEASE_TTL.as_secs()),
        )
        .unwrap();
        Cluster { etcd, mock, dir }
    }

    /// Starts a node process in `region` with id `id` and its own state directory.
    fn node(&self, region: &str, id: &str) -> NodeProcess {
        self.node_with(region, id, &[])
    }

    fn node_with(&self, region: &str, id: &str, extra: &[&str]) -> NodeProcess {
        self.node_in(region, id, &format!("state-{id}"), extra)
    }

    /// A node whose state directory is `state` under the test's folder (two
    /// processes cannot share one: the deferred spool in it is locked).
    fn node_in(&self, region: &str, id: &str, state: &str, extra: &[&str]) -> NodeProcess {
        let state = self.dir.path().join(state);
        let config = self.dir.path().join("node.toml");
        NodeProcess::spawn(
            &[
                "--config",
                config.to_str().unwrap(),
                "--upstream",
                self.mock.url(),
                "--etcd",
                &self.etcd.url,
                "--region",
                region,
                "--node-id",
                id,
                "--state-dir",
                state.to_str().unwrap(),
                "--no-access-log",
            ]
            .iter()
            .chain(extra)
            .copied()
            .collect::<Vec<_>>(),
            &[("STRAIT_KEK", KEK_HEX)],
        )
    }

    async fn client(&self) -> Client {
        self.etcd.client().await
    }
}

/// Puts a JSON document; returns the revision of the write.
async fn put<T: serde::Serialize>(c: &mut Client, key: &str, doc: &T) -> i64 {
    c.put(key, serde_json::to_vec(doc).unwrap(), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

async fn put_raw(c: &mut Client, key: &str, value: &str) -> i64 {
    c.put(key, value, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

async fn delete(c: &mut Client, key: &str) -> i64 {
    c.delete(key, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

fn client_key(id: &str, secret: &str, allowed_regions: Option<&[&str]>) -> ClientKeyDoc {
    ClientKeyDoc {
        id: id.into(),
        name: format!("{id}-name"),
        tenant: Some("acme".into()),
        sha256: hex::encode(hash_key(secret)),
        created_at: "2026-11-27T00:00:00Z".into(),
        revoked: false,
        limits: LimitsDoc {
            rpm: Some(600),
            ..Default::default()
        },
        allowed_regions: allowed_regions.map(|r| r.iter().map(|s| s.to_string()).collect()),
        pool: None,
    }
}

/// The base cluster config: a sealed default pool, tenant `acme`, and [`CLIENT_KEY`].
async fn seed(c: &mut Client) -> i64 {
    let pool = UpstreamPoolDoc {
        name: DEFAULT_POOL.into(),
        keys: vec![kek().seal("up-1", "prod-1", SEALED_UPSTREAM)],
    };
    put(c, &pool_key(DEFAULT_POOL), &pool).await;
    put(
        c,
        &tenant_key("acme"),
        &TenantDoc {
            name: "acme".into(),
            limits: LimitsDoc::default(),
            allowed_regions: None,
        },
    )
    .await;
    put(
        c,
        &client_key_key("ck-alpha"),
        &client_key("ck-alpha", CLIENT_KEY, None),
    )
    .await
}

async fn metric(admin: std::net::SocketAddr, name: &str) -> f64 {
    let r = get(&format!("http://{admin}/metrics"), &[]).await;
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(f64::NAN)
}

async fn readyz(node: &NodeProcess) -> Resp {
    get(&format!("http://{}/readyz", node.admin), &[]).await
}

async fn message(node: &NodeProcess, key: &str) -> Resp {
    post_json(
        &format!("{}/v1/messages", node.url()),
        &auth(key),
        &message_body(false),
    )
    .await
}

async fn record(c: &mut Client, region: &str, id: &str) -> Option<(NodeRecord, i64)> {
    let r = c.get(node_key(region, id), None).await.unwrap();
    r.kvs()
        .first()
        .map(|kv| (serde_json::from_slice(kv.value()).unwrap(), kv.lease()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_expire_after_kill_9() {
    let cl = Cluster::start().await;
    let mut c = cl.client().await;
    let a = cl.node("eu", "node-a");
    let b = cl.node("us", "node-b");

    let (rec, lease) = record(&mut c, "eu", "node-a")
        .await
        .expect("node-a registered");
    assert_eq!(rec.id, "node-a");
    assert_eq!(rec.region, "eu");
    assert_eq!(rec.public_addr, a.public.to_string());
    assert_eq!(rec.admin_addr, a.admin.to_string());
    assert_eq!(rec.state, NodeState::Serving);
    assert_eq!(rec.version, env!("CARGO_PKG_VERSION"));
    assert!(lease != 0, "the record lives under a lease");
    // Operators read the cluster with plain etcdctl.
    let out = cl
        .etcd
        .etcdctl(&["get", "--prefix", NODES_PREFIX, "--keys-only"]);
    let keys = String::from_utf8_lossy(&out.stdout);
    assert!(
        keys.contains("/strait/nodes/eu/node-a") && keys.contains("/strait/nodes/us/node-b"),
        "{keys}"
    );

    // Membership is watched: both nodes see two live nodes.
    for n in [&a, &b] {
        eventually("two live nodes", Duration::from_secs(5), || async {
            metric(n.admin, "strait_cluster_nodes").await == 2.0
        })
        .await;
    }

    // A second node with a taken id (another machine: its own state) is told so in
    // its log.
    let twin = cl.node_in("eu", "node-a", "state-twin", &[]);
    logged(
        || twin.log(),
        "another node may be registered with this node id",
    )
    .await;
    drop(twin);
    // It took the record over; node-a writes it back at its next refresh. Wait for
    // that so the expiry below measures node-a's lease.
    eventually("node-a's record again", LEASE_TTL * 3, || async {
        record(&mut cl.client().await, "eu", "node-a")
            .await
            .is_some_and(|(r, _)| r.public_addr == a.public.to_string())
    })
    .await;

    // kill -9: no goodbye; the record goes when the lease expires.
    a.signal("KILL");
    let killed = Instant::now();
    eventually(
        "node-a's record expires",
        LEASE_TTL + Duration::from_secs(4),
        || async {
            record(&mut cl.client().await, "eu", "node-a")
                .await
                .is_none()
        },
    )
    .await;
    let gone = killed.elapsed();
    println!("record of a kill -9 node gone after {gone:?} (lease TTL {LEASE_TTL:?})");
    eventually(
        "node-b sees one live node",
        Duration::from_secs(3),
        || async { metric(b.admin, "strait_cluster_nodes").await == 1.0 },
    )
    .await;
    assert!(
        record(&mut c, "us", "node-b").await.is_some(),
        "the live node stays registered"
    );
    // The record carries the node's upstream path health, refreshed about every TTL.
    assert_eq!(
        message(&b, CLIENT_KEY).await.status,
        401,
        "passthrough (no keys in etcd): the mock refuses the client's own key"
    );
    eventually("path health in the record", LEASE_TTL * 3, || async {
        record(&mut cl.client().await, "us", "node-b")
            .await
            .is_some_and(|(r, _)| r.path.ttfb_ms.is_some())
    })
    .await;
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_from_etcd_flips_readiness_and_record_and_sigterm_deregisters() {
    let cl = Cluster::start().await;
    let mut c = cl.client().await;
    seed(&mut c).await;
    let mut n = cl.node("eu", "node-a");
    assert_eq!(readyz(&n).await.status, 200);

    put(
        &mut c,
        &drain_key("eu", "node-a"),
        &DrainDoc { draining: true },
    )
    .await;
    eventually(
        "readyz fails while drained",
        Duration::from_secs(3),
        || async { readyz(&n).await.status == 503 },
    )
    .await;
    assert_eq!(
        readyz(&n).await.json()["checks"]["node:draining"][0]["status"],
        "fail"
    );
    eventually("record says draining", Duration::from_secs(3), || async {
        record(&mut cl.client().await, "eu", "node-a")
            .await
            .is_some_and(|(r, _)| r.state == NodeState::Draining)
    })
    .await;
    // An etcd-driven drain keeps serving: only DNS moves clients away.
    assert_eq!(message(&n, CLIENT_KEY).await.status, 200);

    put(
        &mut c,
        &drain_key("eu", "node-a"),
        &DrainDoc { draining: false },
    )
    .await;
    eventually("undrained", Duration::from_secs(3), || async {
        readyz(&n).await.status == 200
    })
    .await;
    eventually("record says serving", Duration::from_secs(3), || async {
        record(&mut cl.client().await, "eu", "node-a")
            .await
            .is_some_and(|(r, _)| r.state == NodeState::Serving)
    })
    .await;

    // A region drain applies to every node of the region.
    put(&mut c, &region_key("eu"), &RegionDoc { draining: true }).await;
    eventually("region drain", Duration::from_secs(3), || async {
        readyz(&n).await.status == 503
    })
    .await;
    delete(&mut c, &region_key("eu")).await;
    eventually("region drain lifted", Duration::from_secs(3), || async {
        readyz(&n).await.status == 200
    })
    .await;

    // A clean stop deletes the record at once.
    n.signal("TERM");
    let code = tokio::task::spawn_blocking(move || (n.wait(Duration::from_secs(15)), n))
        .await
        .unwrap();
    assert_eq!(code.0, Some(0), "{}", code.1.log());
    assert!(
        record(&mut c, "eu", "node-a").await.is_none(),
        "record deleted on clean stop"
    );
    assert!(code.1.log().contains("deregistered from etcd"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_marks_the_record_draining_until_streams_finish_then_deletes_it() {
    let pacing = Pacing {
        ttft: Duration::ZERO,
        interval: Duration::from_millis(100),
        tokens: 15,
    };
    let cl = Cluster::start_with(pacing).await;
    let mut c = cl.client().await;
    seed(&mut c).await;
    let mut n = cl.node("eu", "node-a");
    let url = format!("{}/v1/messages", n.url());
    let stream =
        tokio::spawn(async move { post_json(&url, &auth(CLIENT_KEY), &message_body(true)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    n.signal("TERM");
    eventually(
        "record says draining while the stream runs",
        Duration::from_secs(1),
        || async {
            record(&mut cl.client().await, "eu", "node-a")
                .await
                .is_some_and(|(r, _)| r.state == NodeState::Draining)
        },
    )
    .await;
    let r = stream.await.unwrap();
    assert_eq!(
        r.event_names().last().map(String::as_str),
        Some("message_stop"),
        "the stream finished: {}",
        r.text()
    );
    let (code, n) = tokio::task::spawn_blocking(move || (n.wait(Duration::from_secs(15)), n))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{}", n.log());
    assert!(
        record(&mut c, "eu", "node-a").await.is_none(),
        "deleted on exit, not left to expire"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_change_reaches_two_nodes_and_takes_effect() {
    let cl = Cluster::start().await;
    let mut c = cl.client().await;
    seed(&mut c).await;
    let eu = cl.node("eu", "node-eu");
    let us = cl.node("us", "node-us");
    for n in [&eu, &us] {
        // The upstream key came from etcd, sealed: the mock accepts only that key.
        assert_eq!(message(n, CLIENT_KEY).await.status, 200, "{}", n.log());
        message(n, "strait-beta-key")
            .await
            .assert_gateway_error(401, "authentication_error");
    }

    // A new key works on both nodes.
    put(
        &mut c,
        &client_key_key("ck-beta"),
        &client_key("ck-beta", "strait-beta-key", None),
    )
    .await;
    for n in [&eu, &us] {
        eventually("new key accepted", Duration::from_secs(2), || async {
            message(n, "strait-beta-key").await.status == 200
        })
        .await;
    }
    // Revoking a key stops it everywhere.
    let mut revoked = client_key("ck-alpha", CLIENT_KEY, None);
    revoked.revoked = true;
    put(&mut c, &client_key_key("ck-alpha"), &revoked).await;
    for n in [&eu, &us] {
        eventually("revoked key refused", Duration::from_secs(2), || async {
            message(n, CLIENT_KEY).await.status == 401
        })
        .await;
    }
    // Region policy: a key pinned to eu is refused by the us node (gateway-made 403).
    put(
        &mut c,
        &client_key_key("ck-eu"),
        &client_key("ck-eu", "strait-eu-only", Some(&["eu"])),
    )
    .await;
    eventually(
        "pinned key served in eu",
        Duration::from_secs(2),
        || async { message(&eu, "strait-eu-only").await.status == 200 },
    )
    .await;
    eventually(
        "pinned key refused in us",
        Duration::from_secs(2),
        || async { message(&us, "strait-eu-only").await.status == 403 },
    )
    .await;
    message(&us, "strait-eu-only")
        .await
        .assert_gateway_error(403, "permission_error");
    // A tenant's region list narrows its keys too.
    let tenant = TenantDoc {
        name: "acme".into(),
        limits: LimitsDoc::default(),
        allowed_regions: Some(vec!["us".into()]),
    };
    put(&mut c, &tenant_key("acme"), &tenant).await;
    eventually("tenant pinned to us", Duration::from_secs(2), || async {
        message(&eu, "strait-beta-key").await.status == 403
    })
    .await;
    assert_eq!(message(&us, "strait-beta-key").await.status, 200);
    assert_eq!(
        message(&us, "strait-eu-only").await.status,
        403,
        "key eu-only, tenant us-only: nowhere"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_propagation_p99_under_one_second() {
    let cl = Cluster::start().await;
    let mut c = cl.client().await;
    seed(&mut c).await;
    let nodes = [cl.node("eu", "node-eu"), cl.node("us", "node-us")];
    let mut samples = Vec::new();
    for i in 0..50u64 {
        let doc = TenantDoc {
            name: "bench".into(),
            limits: LimitsDoc {
                rpm: Some(1000 + i),
                ..Default::default()
            },
            allowed_regions: None,
        };
        let started = Instant::now();
        let rev = put(&mut c, &tenant_key("bench"), &doc).await;
        let mut seen = [false, false];
        loop {
            for (k, n) in nodes.iter().enumerate() {
                if !seen[k] && metric(n.admin, "strait_config_revision").await >= rev as f64 {
                    seen[k] = true;
                }
            }
            if seen.iter().all(|s| *s) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "revision {rev} did not reach both nodes"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    println!(
        "config propagation to 2 nodes over {} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        samples.len(),
        p(0.50).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3
    );
    assert!(p(0.99) < Duration::from_secs(1), "p99 {:?}", p(0.99));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_rejected_and_the_previous_snapshot_kept() {
    let cl = Cluster::start().await;
    let mut c = cl.client().await;
    let good = seed(&mut c).await;
    let n = cl.node("eu", "node-a");
    eventually("seeded revision", Duration::from_secs(2), || async {
        metric(n.admin, "strait_config_revision").await >= good as f64
    })
    .await;
    let rejected = metric(n.admin, "strait_config_rejected_total").await;
    let applied = metric(n.admin, "strait_config_revision").await;

    // Broken JSON, then a dangling reference: each rejects the whole snapshot.
    put_raw(&mut c, &client_key_key("ck-broken"), "{not json").await;
    eventually("rejection counted", Duration::from_secs(2), || async {
        metric(n.admin, "strait_config_rejected_total").await >= rejected + 1.0
    })
    .await;
    delete(&mut c, &client_key_key("ck-broken")).await;
    let mut dangling = client_key("ck-dangling", "strait-dangling", None);
    dangling.tenant = Some("nobody".into());
    // The delete above brings the good config back; wait for it, then break it again.
    eventually("good again", Duration::from_secs(2), || async {
        metric(n.admin, "strait_config_revision").await > applied
    })
    .await;
    let good_rev = metric(n.admin, "strait_config_revision").await;
    let bad = put(&mut c, &client_key_key("ck-dangling"), &dangling).await;
    eventually("second rejection", Duration::from_secs(2), || async {
        metric(n.admin, "strait_config_rejected_total").await >= rejected + 2.0
    })
    .await;
    assert_eq!(
        metric(n.admin, "strait_config_revision").await,
        good_rev,
        "the revision served stays the last good one"
    );
    assert!(bad as f64 > good_rev);
    // The previous snapshot still serves: the old key works, the new one does not exist.
    assert_eq!(message(&n, CLIENT_KEY).await.status, 200);
    assert_eq!(message(&n, "strait-dangling").await.status, 401);
    logged(|| n.log(), "cluster config rejected").await;
    logged(|| n.log(), "unknown tenant").await;
    let r = readyz(&n).await;
    assert_eq!(r.status, 200, "a rejected change warns, it does not fail");
    let v = r.json();
    assert_eq!(v["checks"]["etcd:cluster"][0]["status"], "warn", "{v}");
    assert!(
        v["checks"]["etcd:cluster"][0]["output"]
            .as_str()
            .unwrap()
            .contains("rejected"),
        "{v}"
    );
    // Fixing it clears the warning.
    delete(&mut c, &client_key_key("ck-dangling")).await;
    eventually("fixed", Duration::from_secs(2), || async {
        readyz(&n).await.json()["status"] == "pass"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_nodes_keep_serving_reregister_and_miss_no_change() {
    let mut cl = Cluster::start().await;
    let mut c = cl.client().await;
    seed(&mut c).await;
    let n = cl.node("eu", "node-a");
    let (_, lease_before) = record(&mut c, "eu", "node-a").await.unwrap();
    drop(c);

    cl.etcd.stop();
    eventually("etcd loss noticed", Duration::from_secs(5), || async {
        metric(n.admin, "strait_etcd_connected").await == 0.0
    })
    .await;
    // Still serving with the last config; readiness warns and says why.
    assert_eq!(message(&n, CLIENT_KEY).await.status, 200);
    let r = readyz(&n).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["status"], "warn", "{v}");
    assert_eq!(v["checks"]["etcd:cluster"][0]["status"], "warn", "{v}");

    std::thread::sleep(Duration::from_millis(500));
    cl.etcd.restart();
    // Changes made right after the restart, before the node is back, must not be missed.
    let mut c = cl.client().await;
    put(
        &mut c,
        &client_key_key("ck-beta"),
        &client_key("ck-beta", "strait-beta-key", None),
    )
    .await;
    let last = put(
        &mut c,
        &client_key_key("ck-gamma"),
        &client_key("ck-gamma", "strait-gamma-key", None),
    )
    .await;

    eventually("reconnected", Duration::from_secs(10), || async {
        metric(n.admin, "strait_etcd_connected").await == 1.0
    })
    .await;
    eventually("caught up", Duration::from_secs(3), || async {
        metric(n.admin, "strait_config_revision").await >= last as f64
    })
    .await;
    assert_eq!(message(&n, "strait-beta-key").await.status, 200);
    assert_eq!(message(&n, "strait-gamma-key").await.status, 200);
    let (rec, lease_after) = record(&mut c, "eu", "node-a").await.expect("re-registered");
    assert_ne!(
        lease_after, lease_before,
        "a fresh lease after the reconnect"
    );
    assert_eq!(rec.state, NodeState::Serving);
    assert_eq!(readyz(&n).await.json()["status"], "pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_rebuilt_from_scratch_is_reloaded_not_waited_for() {
    let mut cl = Cluster::start().await;
    let mut c = cl.client().await;
    seed(&mut c).await;
    let n = cl.node("eu", "node-a");
    put(
        &mut c,
        &client_key_key("ck-beta"),
        &client_key("ck-beta", "strait-beta-key", None),
    )
    .await;
    eventually("beta", Duration::from_secs(2), || async {
        message(&n, "strait-beta-key").await.status == 200
    })
    .await;
    drop(c);

    // A new, empty etcd on the same address: its revisions are behind the node's.
    cl.etcd.stop();
    cl.etcd.wipe();
    cl.etcd.restart();
    let mut c = cl.client().await;
    seed(&mut c).await;
    eventually(
        "reloaded from the new etcd",
        Duration::from_secs(10),
        || async {
            metric(n.admin, "strait_etcd_connected").await == 1.0
                && message(&n, "strait-beta-key").await.status == 401
                && message(&n, CLIENT_KEY).await.status == 200
        },
    )
    .await;
    logged(|| n.log(), "revision went backwards").await;
    assert!(
        record(&mut c, "eu", "node-a").await.is_some(),
        "registered in the new etcd"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restarted_with_etcd_down_serves_from_disk() {
    let mut cl = Cluster::start().await;
    let mut c = cl.client().await;
    let rev = seed(&mut c).await;
    let mut n = cl.node("eu", "node-a");
    assert_eq!(message(&n, CLIENT_KEY).await.status, 200);
    n.signal("TERM");
    tokio::task::spawn_blocking(move || n.wait(Duration::from_secs(15)))
        .await
        .unwrap();
    drop(c);

    // The snapshot on disk holds the documents as etcd did: the upstream key sealed.
    let snap =
        std::fs::read_to_string(cl.dir.path().join("state-node-a/cluster-snapshot.json")).unwrap();
    assert!(snap.contains("ck-alpha"));
    assert!(
        !snap.contains(SEALED_UPSTREAM),
        "no upstream key in clear on disk"
    );

    cl.etcd.stop();
    let n = cl.node("eu", "node-a");
    assert_eq!(
        message(&n, CLIENT_KEY).await.status,
        200,
        "served from the disk snapshot: {}",
        n.log()
    );
    let v = readyz(&n).await.json();
    assert_eq!(v["status"], "warn", "{v}");
    let check = &v["checks"]["etcd:cluster"][0];
    assert_eq!(check["observedValue"], rev, "{v}");
    assert!(
        check["output"].as_str().unwrap().contains("from disk"),
        "{v}"
    );

    cl.etcd.restart();
    eventually(
        "joins once etcd is back",
        Duration::from_secs(10),
        || async { metric(n.admin, "strait_etcd_connected").await == 1.0 },
    )
    .await;
    assert!(record(&mut cl.client().await, "eu", "node-a")
        .await
        .is_some());
    assert_eq!(readyz(&n).await.json()["status"], "pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_keys_never_appear_in_clear_in_etcd() {
    let cl = Cluster::start().await;
    let mut c = cl.client().await;
    seed(&mut c).await;
    let n = cl.node("eu", "node-a");
    assert_eq!(message(&n, CLIENT_KEY).await.status, 200);

    let out = cl.etcd.etcdctl(&["get", "--prefix", ROOT, "-w", "json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kvs = v["kvs"].as_array().unwrap();
    assert!(kvs.len() >= 4, "{v}");
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut all = String::new();
    for kv in kvs {
        let key = String::from_utf8(b64.decode(kv["key"].as_str().unwrap()).unwrap()).unwrap();
        let value = String::from_utf8(b64.decode(kv["value"].as_str().unwrap()).unwrap()).unwrap();
        all.push_str(&format!("{key} {value}\n"));
    }
    assert!(
        all.contains("/strait/config/upstream_pools/default"),
        "{all}"
    );
    assert!(all.contains("/strait/nodes/eu/node-a"), "{all}");
    assert!(
        !all.contains(SEALED_UPSTREAM) && !all.contains("sk-ant"),
        "upstream key in clear in etcd:\n{all}"
    );
    assert!(
        !all.contains(CLIENT_KEY),
        "client keys are stored as hashes only:\n{all}"
    );
    assert!(!all.contains(KEK_HEX), "the KEK is never written:\n{all}");
    // Nor in the node's logs.
    let log = n.log();
    for secret in [SEALED_UPSTREAM, CLIENT_KEY, KEK_HEX] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_etcd_is_detected_and_a_compacted_watch_reloads_everything() {
    let cl = Cluster::start().await;
    let mut c = cl.client().await;
    seed(&mut c).await;
    put(
        &mut c,
        &client_key_key("ck-beta"),
        &client_key("ck-beta", "strait-beta-key", None),
    )
    .await;
    // The node reaches etcd through a fault proxy; the test talks to etcd directly.
    let etcd_addr = cl.etcd.url.trim_start_matches("http://").parse().unwrap();
    let proxy = strait_chaos::faultproxy::FaultProxy::start(etcd_addr)
        .await
        .unwrap();
    let state = cl.dir.path().join("state-node-a");
    let n = NodeProcess::spawn(
        &[
            "--config",
            cl.dir.path().join("node.toml").to_str().unwrap(),
            "--upstream",
            cl.mock.url(),
            "--etcd",
            &format!("http://{}", proxy.addr()),
            "--region",
            "eu",
            "--node-id",
            "node-a",
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &[("STRAIT_KEK", KEK_HEX)],
    );
    assert_eq!(message(&n, "strait-beta-key").await.status, 200);

    // A silent etcd (packets held, no reset) is found by HTTP/2 pings and the
    // keep-alive timer, not only by a closed socket.
    proxy.set_blackhole(true);
    eventually("silent etcd noticed", Duration::from_secs(10), || async {
        metric(n.admin, "strait_etcd_connected").await == 0.0
    })
    .await;
    assert_eq!(
        message(&n, "strait-beta-key").await.status,
        200,
        "serving meanwhile"
    );

    // Now cut it cleanly, change config behind the node's back, and compact the
    // history so the node cannot resume its watch where it stopped.
    proxy.set_refuse(true);
    proxy.reset_all();
    proxy.set_blackhole(false);
    delete(&mut c, &client_key_key("ck-beta")).await;
    let last = put(
        &mut c,
        &client_key_key("ck-gamma"),
        &client_key("ck-gamma", "strait-gamma-key", None),
    )
    .await;
    c.compact(last, None).await.unwrap();
    proxy.set_refuse(false);

    eventually("reconnected", Duration::from_secs(10), || async {
        metric(n.admin, "strait_etcd_connected").await == 1.0
    })
    .await;
    eventually("caught up", Duration::from_secs(3), || async {
        metric(n.admin, "strait_config_revision").await >= last as f64
    })
    .await;
    assert_eq!(message(&n, "strait-gamma-key").await.status, 200);
    assert_eq!(
        message(&n, "strait-beta-key").await.status,
        401,
        "a delete during the outage is not missed"
    );
    logged(|| n.log(), "reloading everything").await;
    assert!(
        record(&mut c, "eu", "node-a").await.is_some(),
        "re-registered"
    );
}

#[test]
fn example_cluster_section_validates_when_etcd_is_set() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/node.example.toml");
    let mut raw = strait_node::config::RawConfig::from_file(&path).unwrap();
    assert!(
        raw.cluster.etcd.is_empty(),
        "the example runs alone unless etcd is set"
    );
    raw.cluster.etcd = vec!["http://10.0.0.5:2379".into()];
    let c = raw
        .validate(
            vec![strait_node::config::Secret::new("sk-ant-example")],
            vec![],
        )
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(c.region, "cn-east");
    assert_eq!(c.lease_ttl, Duration::from_secs(10));
    assert_eq!(c.state_dir, Path::new("/var/lib/strait"));
}

#[test]
fn state_dir_keeps_a_generated_node_id() {
    let dir = tempfile::tempdir().unwrap();
    let a = strait_node::cluster::membership::resolve_node_id(None, &dir.path().join("s")).unwrap();
    let b = strait_node::cluster::membership::resolve_node_id(None, &dir.path().join("s")).unwrap();
    assert_eq!(a, b);
    assert!(valid_name(&a), "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_safe_share_follows_live_membership() {
    let cl = Cluster::start().await;
    let redis = common::redis::RedisServer::start();
    let url = redis.url();
    // expected_nodes says 5; membership says otherwise and wins.
    let args = [
        "--redis",
        url.as_str(),
        "--expected-nodes",
        "5",
        "--default-limits",
        "rpm=100",
    ];
    let a = cl.node_with("eu", "node-a", &args);
    let b = cl.node_with("us", "node-b", &args);
    for n in [&a, &b] {
        eventually(
            "the limiter counts two nodes",
            Duration::from_secs(5),
            || async { metric(n.admin, "strait_limiter_nodes").await == 2.0 },
        )
        .await;
    }
    b.signal("KILL");
    eventually(
        "the limiter counts one node after the lease expires",
        LEASE_TTL + Duration::from_secs(5),
        || async { metric(a.admin, "strait_limiter_nodes").await == 1.0 },
    )
    .await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_set_in_etcd_are_enforced_and_follow_changes() {
    let cl = Cluster::start().await;
    let mut c = cl.client().await;
    seed(&mut c).await;
    let mut doc = client_key("ck-limited", "strait-limited-key", None);
    doc.limits = LimitsDoc {
        rpm: Some(2),
        ..Default::default()
    };
    put(&mut c, &client_key_key("ck-limited"), &doc).await;
    let n = cl.node("eu", "node-a");
    eventually("limited key served", Duration::from_secs(3), || async {
        message(&n, "strait-limited-key").await.status == 200
    })
    .await;
    let r = message(&n, "strait-limited-key").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("anthropic-ratelimit-requests-limit"),
        Some("2"),
        "the gateway's own limit headers"
    );
    let r = message(&n, "strait-limited-key").await;
    r.assert_gateway_error(429, "rate_limit_error");
    assert_eq!(r.header("x-strait-ratelimited"), Some("gateway"));

    // A tenant limit from etcd binds its keys too: acme gets rpm=1, a fresh key of acme
    // is refused after one request.
    let tenant = TenantDoc {
        name: "acme".into(),
        limits: LimitsDoc {
            rpm: Some(1),
            ..Default::default()
        },
        allowed_regions: None,
    };
    put(&mut c, &tenant_key("acme"), &tenant).await;
    let mut fresh = client_key("ck-fresh", "strait-fresh-key", None);
    fresh.limits = LimitsDoc::default();
    put(&mut c, &client_key_key("ck-fresh"), &fresh).await;
    eventually("fresh key served once", Duration::from_secs(3), || async {
        message(&n, "strait-fresh-key").await.status == 200
    })
    .await;
    message(&n, "strait-fresh-key")
        .await
        .assert_gateway_error(429, "rate_limit_error");

    // Raising the key's limit (and lifting the tenant's) takes effect without a restart.
    put(
        &mut c,
        &tenant_key("acme"),
        &TenantDoc {
            limits: LimitsDoc::default(),
            ..tenant
        },
    )
    .await;
    doc.limits = LimitsDoc {
        rpm: Some(100),
        ..Default::default()
    };
    put(&mut c, &client_key_key("ck-limited"), &doc).await;
    eventually("raised limit in force", Duration::from_secs(3), || async {
        message(&n, "strait-limited-key")
            .await
            .header("anthropic-ratelimit-requests-limit")
            == Some("100")
    })
    .await;
    assert_eq!(
        message(&n, "strait-fresh-key").await.status,
        200,
        "tenant limit lifted"
    );
}

/// Waits up to 2 s for `text` in a node's log, then fails with the log. The log is
/// read from the node's output by a thread, a moment behind what its metrics and
/// answers already show.
async fn logged(log: impl Fn() -> String, text: &str) {
    let found = tokio::time::timeout(Duration::from_secs(2), async {
        while !log().contains(text) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "{text:?} not logged:\n{}", log());
}
