//! The fault scenarios, run one at a time on a fresh cluster under the client workload,
//! and the Jepsen-style count of what the clients saw against what the upstream
//! executed, with a verdict against the failure table of the design
//! (lost 0, duplicated 0, false 202 0, limiter overshoot within its documented bound).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde::Serialize;

use super::procs::{self, Usage};
use super::workload::{self, DeferredEnd, Kind, Outcome, Record, WorkloadSpec};
use super::{dns, Cluster, DNS_NAME};
use crate::faultproxy::{Direction, Spikes};
use crate::mock::Fault;

/// A scenario: what it breaks, for how long, and what must hold.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    pub expect: &'static str,
    /// How long the fault lasts.
    pub hold: Duration,
    /// Nodes the fault is aimed at (their DNS and /readyz reactions are timed).
    pub targets: &'static [&'static str],
    /// Whether the targets should leave the DNS answer while the fault lasts.
    pub leaves_dns: bool,
    /// Extra limiter allowance, in limits per window: nodes cut off from Redis each admit
    /// their safe share (limit / live nodes) on top of what Redis grants the others, and
    /// a restarted (emptied) Redis starts a fresh window.
    pub limiter_extra: f64,
    /// Run on a cluster whose limiter uses a three-master Redis Cluster.
    pub redis_cluster: bool,
    /// Run with region r1's broker a three-node RabbitMQ cluster.
    pub broker_cluster: bool,
}

/// Every scenario, in the order `--all` runs them.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "kill-node",
        what: "kill -9 node r1-n1; restart it after the hold",
        expect: "its record expires within the lease TTL and DNS drops it; clients retry other addresses on refused connects; requests in flight on it end unknown (never lost); lost 0, duplicated 0, false 202 0",
        hold: Duration::from_secs(10),
        targets: &["r1-n1"],
        leaves_dns: true,
        limiter_extra: 0.0,
        redis_cluster: false,
        broker_cluster: false,
    },
    Scenario {
        name: "sigstop-node",
        what: "SIGSTOP node r2-n1 for 20 s, then SIGCONT",
        expect: "its lease lapses and DNS drops it; requests it held finish or time out after SIGCONT (unknown, never lost); it re-registers after SIGCONT",
        hold: Duration::from_secs(20),
        targets: &["r2-n1"],
        leaves_dns: true,
        limiter_extra: 0.0,
        redis_cluster: false,
        broker_cluster: false,
    },
    Scenario {
        name: "lose-region",
        what: "kill -9 both nodes of r3 and its broker; bring them back after the hold",
        expect: "both leave DNS within the lease TTL; r3's queued deferrals wait in its quorum queue and are delivered once after the return",
        hold: Duration::from_secs(12),
        targets: &["r3-n1", "r3-n2"],
        leaves_dns: true,
        limiter_extra: 0.0,
        redis_cluster: false,
        broker_cluster: false,
    },
    Scenario {
        name: "partition-etcd",
        what: "blackhole every etcd path of region r1",
        expect: "r1's nodes serve on with their last config (/readyz warn, stay in DNS through the lease as DNS reads etcd records: the record lapses and DNS drops them, then they re-register when healed); no request fails for it",
        hold: Duration::from_secs(12),
        targets: &["r1-n1", "r1-n2"],
        leaves_dns: true,
        limiter_extra: 0.0,
        redis_cluster: false,
        broker_cluster: false,
    },
    Scenario {
        name: "partition-redis",
        what: "blackhole region r1's path to Redis",
        expect: "r1's nodes limit by their safe share (/readyz warn, stay in DNS); deferral there is refused with 503 while results cannot be stored; overshoot within limit x (1 + cut-off nodes / live nodes)",
        hold: Duration::from_secs(12),
        targets: &["r1-n1", "r1-n2"],
        leaves_dns: false,
        limiter_extra: 2.0 / 6.0,
        redis_cluster: false,
        broker_cluster: false,
    },
    Scenario {
        name: "partition-broker",
        what: "blackhole region r2's path to its broker",
        expect: "deferrals in r2 are refused with 503 (never a false 202) after the confirm timeout; plain and streaming requests are unaffected",
        hold: Duration::from_secs(12),
        targets: &["r2-n1", "r2-n2"],
        leaves_dns: false,
        limiter_extra: 0.0,
        redis_cluster: false,
        broker_cluster: false,
    },
    Scenario {
        name: "brownout",
        what: "region r1's upstream: 529 bursts (2 s on, 2 s off), 2 s latency spikes and a 3 s half-open stall of responses",
        expect: "529s retried then passed on as Anthropic-shaped 529 (or deferred with on-outage); stalled requests end in the node's 504 or an SSE error; nothing lost or duplicated",
        hold: Duration::from_secs(14),
        targets: &["r1-n1", "r1-n2"],
        leaves_dns: false,
        limiter_extra: 0.0,
        redis_cluster: false,
        broker_cluster: false,
    },
    Scenario {
        name: "upstream-down",
        what: "region r2's upstream path refuses every connection",
        expect: "r2's circuits open; requests not yet sent are relayed through a peer region (x-strait-relayed-via) or deferred; /readyz warn (relaying)",
        hold: Duration::from_secs(12),
        targets: &["r2-n1", "r2-n2"],
        leaves_dns: false,
        limiter_extra: 0.0,
        redis_cluster: false,
        broker_cluster: false,
    },
    Scenario {
        name: "etcd-leader",
        what: "kill -9 the etcd leader; restart it after the hold",
        expect: "a new leader within about the election timeout; nodes reconnect to the other members; no request fails for it",
        hold: Duration::from_secs(10),
        targets: &[],
        leaves_dns: false,
        limiter_extra: 0.0,
        redis_cluster: false,
        broker_cluster: false,
    },
    Scenario {
        name: "redis-restart",
        what: "kill -9 Redis, start it again on the same port and AOF 3 s later",
        expect: "nodes degrade to safe shares and recover without restart; stored deferred results survive (AOF, fsync always); overshoot within one extra window",
        hold: Duration::from_secs(3),
        targets: &[],
        leaves_dns: false,
        limiter_extra: 1.0,
        redis_cluster: false,
        broker_cluster: false,
    },
    Scenario {
        name: "broker-restart",
        what: "stop region r1's broker cleanly, start it again after the hold",
        expect: "deferrals in r1 refused with 503 while it is down; confirmed messages survive in the quorum queue and are delivered once",
        hold: Duration::from_secs(8),
        targets: &[],
        leaves_dns: false,
        limiter_extra: 0.0,
        redis_cluster: false,
        broker_cluster: false,
    },
    Scenario {
        name: "rolling-restart",
        what: "SIGTERM every node in turn under load, restarting each before the next",
        expect: "each drains (in-flight requests finish, streams end with message_stop or an error event) and leaves DNS; clients retry refused connects elsewhere",
        hold: Duration::from_secs(0),
        targets: &[],
        leaves_dns: false,
        limiter_extra: 0.0,
        redis_cluster: false,
        broker_cluster: false,
    },
    Scenario {
        name: "coordinator-leader",
        what: "kill -9 the leading coordinator; restart it after the hold",
        expect: "the other coordinator keeps answering DNS (clients ask the second nameserver); the data plane does not notice",
        hold: Duration::from_secs(8),
        targets: &[],
        leaves_dns: false,
        limiter_extra: 0.0,
        redis_cluster: false,
        broker_cluster: false,
    },
    Scenario {
        name: "redis-cluster-master",
        what: "limiter on a three-master Redis Cluster: kill -9 one master, restart it on its AOF after 8 s",
        expect: "a third of the slots go away and the cluster reports fail: nodes degrade to safe shares (/readyz warn) and recover when the master rejoins; overshoot within one extra window",
        hold: Duration::from_secs(8),
        targets: &[],
        leaves_dns: false,
        limiter_extra: 1.0,
        redis_cluster: true,
        broker_cluster: false,
    },
    Scenario {
        name: "broker-cluster-node",
        what: "region r1's broker is a three-node RabbitMQ cluster: r1's upstream is cut (deferrals queue up), then kill -9 the member the nodes use (the quorum queue's leader); its proxy moves to the second member as a load balancer would; upstream and the killed member back after 10 s",
        expect: "deferrals in r1 refused with 503 until the nodes reconnect (never a false 202); confirmed messages survive on the other two members and are delivered once",
        hold: Duration::from_secs(10),
        targets: &[],
        leaves_dns: false,
        limiter_extra: 0.0,
        redis_cluster: false,
        broker_cluster: true,
    },
];

pub fn find(name: &str) -> Option<Scenario> {
    SCENARIOS.iter().copied().find(|s| s.name == name)
}

/// How long a run takes and how hard it pushes.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Workload before the fault.
    pub warmup: Duration,
    /// Workload after the heal.
    pub after: Duration,
    pub workers: usize,
    pub max_requests: usize,
    pub think: Duration,
    /// Longest wait for deferred ids to end after the workload.
    pub settle: Duration,
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            warmup: Duration::from_secs(5),
            after: Duration::from_secs(12),
            workers: 8,
            max_requests: 5_000,
            think: Duration::from_millis(150),
            settle: Duration::from_secs(60),
        }
    }
}

/// Failure counts by kind (`502 api_error gateway`, `stream_error`, ...).
pub type Failures = BTreeMap<String, u64>;

/// What one scenario run counted and measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub started_at: String,
    pub attempted: u64,
    pub succeeded: u64,
    pub failed: Failures,
    /// Failures that were not Anthropic-shaped JSON (excluding connect failures and
    /// stream error events, which are shaped SSE).
    pub failed_unshaped: u64,
    pub connect_failed: u64,
    pub connect_retries: u64,
    pub relayed: u64,
    pub deferred: u64,
    pub delivered_later: u64,
    /// Deferred ids that ended otherwise (outcome_unknown, dead-lettered, an upstream error).
    pub deferred_ended_other: u64,
    pub outcome_unknown: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub false_202: u64,
    /// Requests the client was told failed (an error status or an SSE error event) that
    /// the upstream nevertheless executed: honest only for timeouts (504), whose outcome
    /// is unknown by nature.
    pub failed_but_executed: BTreeMap<String, u64>,
    /// Deferrals refused (`503`, "NOT queued") that were executed anyway: a false refusal.
    pub false_refusal: u64,
    pub limited_admitted: u64,
    pub limited_bound: u64,
    pub limit_rpm: u64,
    pub dns_react_ms: Option<u64>,
    pub readyz_react_ms: Option<u64>,
    pub recover_ms: Option<u64>,
    /// The `/readyz` statuses each target went through from the fault to the heal.
    pub target_readyz: BTreeMap<String, Vec<String>>,
    /// The DNS answers (sorted addresses) seen from the fault to the heal, in order.
    pub dns_answers: Vec<Vec<Ipv4Addr>>,
    pub usage_before: Vec<(String, Option<Usage>)>,
    pub usage_after: Vec<(String, Option<Usage>)>,
    pub fd_growth_max: i64,
    pub notes: Vec<String>,
    pub checks: Vec<(String, bool)>,
    pub pass: bool,
    pub seconds: f64,
    /// Up to 20 examples of lost, unknown and duplicated requests.
    pub examples: Vec<String>,
    /// Every request, for a closer look (written to its own file by the binary).
    #[serde(skip)]
    pub records: Vec<Record>,
}

#[derive(Default)]
struct Timeline {
    dns: Vec<(u64, Option<Vec<Ipv4Addr>>)>,
    ready: HashMap<String, Vec<(u64, String)>>,
}

async fn readyz(client: &workload::HttpClient, admin: SocketAddr) -> String {
    let Ok(req) = Request::get(format!("http://{admin}/readyz")).body(Full::new(Bytes::new()))
    else {
        return "down".into();
    };
    match tokio::time::timeout(Duration::from_millis(400), client.request(req)).await {
        Ok(Ok(resp)) => {
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            body.ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["status"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "garbled".into())
        }
        Ok(Err(_)) => "down".into(),
        Err(_) => "silent".into(),
    }
}

/// Polls DNS and every node's `/readyz` every 250 ms, keeping the changes.
fn monitor(
    cluster: &Cluster,
    started: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Arc<Mutex<Timeline>>, tokio::task::JoinHandle<()>) {
    let tl = Arc::new(Mutex::new(Timeline::default()));
    let nodes: Vec<(String, SocketAddr)> = cluster
        .regions
        .iter()
        .flat_map(|r| r.nodes.iter().map(|n| (n.id.clone(), n.admin)))
        .collect();
    let servers = cluster.dns_servers();
    let t = tl.clone();
    let task = tokio::spawn(async move {
        let client = workload::http_client();
        while !*stop.borrow() {
            let now = started.elapsed().as_millis() as u64;
            let mut answer = dns::resolve_any(&servers, DNS_NAME).await;
            if let Some(a) = answer.as_mut() {
                a.sort();
            }
            let states =
                futures_util::future::join_all(nodes.iter().map(|(_, a)| readyz(&client, *a)))
                    .await;
            {
                let mut tl = t.lock().unwrap_or_else(|e| e.into_inner());
                if tl.dns.last().map(|(_, a)| a) != Some(&answer) {
                    tl.dns.push((now, answer));
                }
                for ((id, _), s) in nodes.iter().zip(states) {
                    let v = tl.ready.entry(id.clone()).or_default();
                    if v.last().map(|(_, x)| x) != Some(&s) {
                        v.push((now, s));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    (tl, task)
}

async fn inject(s: &Scenario, c: &mut Cluster) {
    match s.name {
        "kill-node" => c.node_mut("r1-n1").kill9(),
        "sigstop-node" => {
            c.node("r2-n1").sigstop();
        }
        "lose-region" => {
            let r = &mut c.regions[2];
            for n in &mut r.nodes {
                n.kill9();
            }
            r.broker.kill();
        }
        "partition-etcd" => {
            for p in &c.regions[0].etcd_proxies {
                p.set_blackhole(true);
            }
        }
        "partition-redis" => c.regions[0].redis_proxy.set_blackhole(true),
        "partition-broker" => c.regions[1].broker_proxy.set_blackhole(true),
        "brownout" => {
            let r = &c.regions[0];
            r.upstream_proxy.set_spikes(Some(Spikes {
                every: Duration::from_secs(3),
                length: Duration::from_millis(800),
                extra_min: Duration::from_secs(2),
                extra_max: Duration::from_secs(2),
            }));
            let key = r.upstream_key.clone();
            let phase = Instant::now();
            // 529 bursts: two seconds on, two off; a 3 s half-open stall in the middle.
            while phase.elapsed() < s.hold {
                let e = phase.elapsed().as_secs();
                if (e / 2) % 2 == 0 {
                    c.mock.set_key_fault(&key, Fault::status(529));
                } else {
                    c.mock.clear_key_fault(&key);
                }
                let stall = (6..9).contains(&e);
                r.upstream_proxy.set_stall(Direction::Downstream, stall);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        "upstream-down" => {
            let p = &c.regions[1].upstream_proxy;
            p.set_refuse(true);
            p.reset_all();
        }
        "etcd-leader" => {
            let eps = c.etcd_endpoints();
            let leader = tokio::task::block_in_place(|| procs::etcd_leader(&eps)).unwrap_or(0);
            c.etcd[leader].proc.kill9();
        }
        "redis-restart" => {
            tokio::task::block_in_place(|| c.redis.restart_after(s.hold));
        }
        "broker-restart" => tokio::task::block_in_place(|| c.regions[0].broker.stop()),
        "rolling-restart" => {
            let ids: Vec<String> = c
                .regions
                .iter()
                .flat_map(|r| r.nodes.iter().map(|n| n.id.clone()))
                .collect();
            for id in ids {
                let node = c.node_mut(&id);
                let code = tokio::task::block_in_place(|| {
                    let code = node.term(Duration::from_secs(15));
                    node.restart();
                    code
                });
                if code != Some(0) {
                    tracing::warn!(node = %id, ?code, "drain did not exit 0");
                }
                c.wait_all_in_dns(Duration::from_secs(20)).await;
            }
        }
        "coordinator-leader" => {
            let i = tokio::task::block_in_place(|| c.coordinator_leader()).unwrap_or(0);
            c.coordinators[i].kill9();
        }
        "redis-cluster-master" => c.redis_masters[0].proc.kill9(),
        "broker-cluster-node" => {
            // Cut r1's upstream first so its `always` deferrals pile up in the queue:
            // the kill must find messages there, or it proves nothing.
            let r = &mut c.regions[0];
            r.upstream_proxy.set_refuse(true);
            r.upstream_proxy.reset_all();
            tokio::time::sleep(Duration::from_secs(4)).await;
            tokio::task::block_in_place(|| r.broker.kill());
            let next = SocketAddr::from(([127, 0, 0, 1], r.broker_peers[0].port));
            r.broker_proxy.set_upstream(next);
            r.broker_proxy.reset_all();
        }
        other => panic!("unknown scenario {other}"),
    }
}

async fn heal(s: &Scenario, c: &mut Cluster) {
    c.heal_all();
    match s.name {
        "kill-node" => tokio::task::block_in_place(|| c.node_mut("r1-n1").restart()),
        "sigstop-node" => {
            c.node("r2-n1").sigcont();
        }
        "lose-region" => tokio::task::block_in_place(|| {
            let r = &mut c.regions[2];
            r.broker.start_again();
            for n in &mut r.nodes {
                n.restart();
            }
        }),
        "etcd-leader" => tokio::task::block_in_place(|| {
            for m in &mut c.etcd {
                if !m.proc.running() {
                    m.restart();
                }
            }
        }),
        "broker-restart" => tokio::task::block_in_place(|| c.regions[0].broker.start_again()),
        "broker-cluster-node" => tokio::task::block_in_place(|| c.regions[0].broker.start_again()),
        "redis-cluster-master" => tokio::task::block_in_place(|| {
            c.redis_masters[0].restart_after(Duration::ZERO);
            let deadline = Instant::now() + Duration::from_secs(20);
            while !procs::redis_cluster_ok(&c.redis_masters) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
        }),
        "coordinator-leader" => tokio::task::block_in_place(|| {
            for co in &mut c.coordinators {
                if co.pid().is_none() {
                    co.restart();
                }
            }
        }),
        _ => {}
    }
}

fn failure_key(o: &Outcome) -> Option<String> {
    match o {
        Outcome::Failed {
            status,
            error_type,
            gateway,
            ..
        } => Some(format!(
            "{status} {error_type}{}",
            if *gateway { " (gateway)" } else { "" }
        )),
        Outcome::StreamError => Some("stream error event".into()),
        Outcome::ConnectFailed => Some("no address connected".into()),
        Outcome::NoDns => Some("no DNS answer".into()),
        _ => None,
    }
}

/// Runs one scenario on `cluster` (which it leaves faulted-then-healed) and counts.
pub async fn run(s: &Scenario, cluster: &mut Cluster, spec: &RunSpec) -> Report {
    let run_started = Instant::now();
    let mut report = Report {
        scenario: s.name.to_string(),
        started_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        ..Report::default()
    };
    cluster.mock.clear_executed();
    report.usage_before = cluster.usage();
    let pids_before: HashMap<String, Option<u32>> = cluster
        .regions
        .iter()
        .flat_map(|r| r.nodes.iter().map(|n| (n.id.clone(), n.pid())))
        .collect();
    let started = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (timeline, mon) = monitor(cluster, started, stop_rx);

    // The workload runs until the heal plus `after` (a cap of ten minutes and the
    // request budget bound it too).
    let wl = WorkloadSpec {
        workers: spec.workers,
        duration: Duration::from_secs(600),
        max_requests: spec.max_requests,
        think: spec.think,
        request_timeout: Duration::from_secs(40),
        keys: cluster.spec.keys.clone(),
        dns_servers: cluster.dns_servers(),
        dns_ttl: cluster.spec.dns_ttl,
        port: cluster.public_port,
        tag: s.name.to_string(),
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workload = tokio::spawn(workload::run(wl, started, stop.clone()));

    tokio::time::sleep(spec.warmup).await;
    let t_fault = started.elapsed().as_millis() as u64;
    inject(s, cluster).await;
    // Scenarios whose injection takes its own time (bursts, restarts) hold inside it.
    if !matches!(s.name, "brownout" | "rolling-restart" | "redis-restart") {
        tokio::time::sleep(s.hold).await;
    }
    let t_heal = started.elapsed().as_millis() as u64;
    heal(s, cluster).await;
    tokio::time::sleep(spec.after).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let records = workload.await.unwrap_or_default();
    // Readiness settles a moment after the workload.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    let _ = mon.await;

    count(&mut report, &records);
    report.records = records.clone();
    // Deferred ids: poll each at its region until it ends.
    let ids: Vec<(String, String)> = records
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Deferred { id } => Some((id.clone(), r.key.clone())),
            _ => None,
        })
        .collect();
    let nodes: Vec<(String, SocketAddr)> = cluster
        .regions
        .iter()
        .flat_map(|r| r.nodes.iter().map(|n| (r.name.clone(), n.public)))
        .collect();
    let ends = workload::settle_deferred(&ids, &nodes, &cluster.spec.keys, spec.settle).await;
    for (id, end) in &ends {
        match end {
            DeferredEnd::Delivered => report.delivered_later += 1,
            DeferredEnd::Ended { state, .. } => {
                report.deferred_ended_other += 1;
                if state == "outcome_unknown" {
                    report.outcome_unknown += 1;
                }
            }
            DeferredEnd::Unknown404 => {
                report.false_202 += 1;
                push_example(&mut report, format!("false 202: {id}"));
            }
            DeferredEnd::Open => {
                report.lost += 1;
                push_example(&mut report, format!("202 never ended: {id}"));
            }
        }
    }

    // Duplicates: the mock executed a correlation id more than once.
    let executed = cluster.mock.executed_counts();
    for (id, n) in &executed {
        if *n > 1 {
            report.duplicated += 1;
            push_example(&mut report, format!("executed {n} times: {id}"));
        }
    }
    for r in &records {
        let ran = executed.get(&r.id).copied().unwrap_or(0) > 0;
        if !ran {
            continue;
        }
        if let Some(k) = failure_key(&r.outcome) {
            *report.failed_but_executed.entry(k).or_insert(0) += 1;
            let deferral = matches!(r.kind, Kind::DeferAlways | Kind::DeferOnOutage);
            if deferral && matches!(r.outcome, Outcome::Failed { status: 503, .. }) {
                report.false_refusal += 1;
                push_example(&mut report, format!("refused deferral executed: {}", r.id));
            }
        }
    }
    // Limiter: what reached the upstream under the limited key, against the bound.
    let limited: Vec<_> = cluster
        .spec
        .keys
        .iter()
        .filter(|k| k.rpm.is_some())
        .collect();
    if let Some(k) = limited.first() {
        let prefix = format!("{}-{}-", s.name, k.name);
        report.limited_admitted = executed
            .iter()
            .filter(|(id, _)| id.starts_with(&prefix))
            .map(|(_, n)| u64::from(*n))
            .sum();
        let rpm = k.rpm.unwrap_or(0);
        report.limit_rpm = rpm;
        // Fixed windows start with the first request after the last one ended, so a
        // run of T seconds meets at most floor(T / 60) + 1 of them.
        // T is the workload's span (to the last answer), not the settling after it.
        let span_ms = records
            .iter()
            .map(|r| r.at_ms + r.took_ms)
            .max()
            .unwrap_or(0);
        let windows = (span_ms / 60_000 + 1) as f64;
        report.limited_bound = (rpm as f64 * (windows + s.limiter_extra)).ceil() as u64;
    }

    // Timings.
    let tl = timeline.lock().unwrap_or_else(|e| e.into_inner());
    let target_ips: Vec<Ipv4Addr> = s.targets.iter().map(|t| cluster.node(t).ip).collect();
    if !target_ips.is_empty() {
        report.dns_react_ms = tl
            .dns
            .iter()
            .find(|(t, a)| {
                *t >= t_fault
                    && a.as_ref()
                        .is_some_and(|a| target_ips.iter().any(|ip| !a.contains(ip)))
            })
            .map(|(t, _)| t - t_fault);
        report.readyz_react_ms = s
            .targets
            .iter()
            .filter_map(|id| {
                tl.ready
                    .get(*id)?
                    .iter()
                    .find(|(t, st)| *t >= t_fault && st != "pass")
                    .map(|(t, _)| t - t_fault)
            })
            .min();
    }
    for id in s.targets {
        let seen = tl
            .ready
            .get(*id)
            .map(|v| {
                let before = v
                    .iter()
                    .rev()
                    .find(|(t, _)| *t < t_fault)
                    .map(|(_, st)| st.clone());
                before
                    .into_iter()
                    .chain(
                        v.iter()
                            .filter(|(t, _)| *t >= t_fault && *t <= t_heal)
                            .map(|(_, st)| st.clone()),
                    )
                    .collect()
            })
            .unwrap_or_default();
        report.target_readyz.insert((*id).to_string(), seen);
    }
    report.dns_answers = tl
        .dns
        .iter()
        .filter(|(t, _)| *t >= t_fault && *t <= t_heal)
        .map(|(_, a)| a.clone().unwrap_or_default())
        .collect();
    // Recovery: after the heal, the first moment from which DNS lists every node and
    // every node says pass to the end of the monitoring.
    let all = {
        let mut a = cluster.all_ips();
        a.sort();
        a
    };
    let dns_ok_from = tl
        .dns
        .iter()
        .rev()
        .take_while(|(_, a)| {
            a.as_ref()
                .is_some_and(|a| all.iter().all(|ip| a.contains(ip)))
        })
        .last()
        .map(|(t, _)| *t);
    let ready_ok_from = tl
        .ready
        .values()
        .map(|v| v.last().filter(|(_, s)| s == "pass").map(|(t, _)| *t))
        .try_fold(0u64, |acc, t| t.map(|t| acc.max(t)));
    report.recover_ms = match (dns_ok_from, ready_ok_from) {
        (Some(d), Some(r)) => Some(d.max(r).max(t_heal) - t_heal),
        _ => None,
    };
    let final_ready: Vec<String> = tl
        .ready
        .iter()
        .filter_map(|(id, v)| {
            v.last()
                .filter(|(_, s)| s != "pass")
                .map(|(_, s)| format!("{id}={s}"))
        })
        .collect();
    if !final_ready.is_empty() {
        report
            .notes
            .push(format!("not pass at the end: {}", final_ready.join(", ")));
    }
    drop(tl);

    report.usage_after = cluster.usage();
    report.fd_growth_max = report
        .usage_before
        .iter()
        .filter_map(|(id, before)| {
            let after = report.usage_after.iter().find(|(i, _)| i == id)?.1?;
            let same = cluster.node(id).pid() == *pids_before.get(id)?;
            let before = (*before)?;
            same.then(|| after.fds as i64 - before.fds as i64)
        })
        .max()
        .unwrap_or(0);

    verdict(s, &mut report);
    report.seconds = run_started.elapsed().as_secs_f64();
    report
}

fn push_example(report: &mut Report, e: String) {
    if report.examples.len() < 20 {
        report.examples.push(e);
    }
}

fn count(report: &mut Report, records: &[Record]) {
    for r in records {
        report.attempted += 1;
        report.connect_retries += u64::from(r.connect_retries);
        if r.relayed_via.is_some() {
            report.relayed += 1;
        }
        match &r.outcome {
            Outcome::Ok => report.succeeded += 1,
            Outcome::Deferred { .. } => report.deferred += 1,
            Outcome::Unknown { why } => {
                report.outcome_unknown += 1;
                push_example(report, format!("unknown {} ({:?}): {why}", r.id, r.kind));
            }
            Outcome::Lost { why } => {
                report.lost += 1;
                push_example(report, format!("lost {} ({:?}): {why}", r.id, r.kind));
            }
            o => {
                if let Outcome::Failed { shaped: false, .. } = o {
                    report.failed_unshaped += 1;
                }
                if *o == Outcome::ConnectFailed {
                    report.connect_failed += 1;
                }
                if let Some(k) = failure_key(o) {
                    *report.failed.entry(k).or_insert(0) += 1;
                }
            }
        }
    }
}

fn verdict(s: &Scenario, r: &mut Report) {
    let mut checks = vec![
        ("attempted > 50".to_string(), r.attempted > 50),
        ("lost 0".to_string(), r.lost == 0),
        ("duplicated 0".to_string(), r.duplicated == 0),
        ("false 202 0".to_string(), r.false_202 == 0),
        (
            "refused deferral never executed".to_string(),
            r.false_refusal == 0,
        ),
        (
            format!(
                "limiter admitted {} <= bound {}",
                r.limited_admitted, r.limited_bound
            ),
            r.limited_admitted <= r.limited_bound,
        ),
        (
            "every failure Anthropic-shaped".to_string(),
            r.failed_unshaped == 0,
        ),
        (
            "recovered (DNS full, all pass)".to_string(),
            r.recover_ms.is_some(),
        ),
        (
            format!("fd growth {} <= 64", r.fd_growth_max),
            r.fd_growth_max <= 64,
        ),
    ];
    if s.leaves_dns {
        checks.push((
            "targets left DNS during the fault".to_string(),
            r.dns_react_ms.is_some(),
        ));
    }
    r.pass = checks.iter().all(|(_, ok)| *ok);
    r.checks = checks;
}

/// One line per report, as in docs/chaos.md.
pub fn table(reports: &[Report]) -> String {
    let mut out = String::from(
        "| scenario | attempted | ok | failed (kinds) | relayed | deferred | delivered later | unknown | lost | dup | false 202 | limited admitted / bound | DNS react | readyz react | recover | fd growth | verdict |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{:.1} s", v as f64 / 1000.0));
    for r in reports {
        let failed: u64 = r.failed.values().sum();
        let kinds = r
            .failed
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; ");
        out.push_str(&format!(
            "| {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.attempted,
            r.succeeded,
            failed,
            if kinds.is_empty() { "-".into() } else { kinds },
            r.relayed,
            r.deferred,
            r.delivered_later,
            r.outcome_unknown,
            r.lost,
            r.duplicated,
            r.false_202,
            r.limited_admitted,
            r.limited_bound,
            ms(r.dns_react_ms),
            ms(r.readyz_react_ms),
            ms(r.recover_ms),
            r.fd_growth_max,
            if r.pass { "pass" } else { "FAIL" },
        ));
    }
    out
}
