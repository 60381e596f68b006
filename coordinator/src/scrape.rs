//! The dashboard's numbers: every [`SCRAPE_EVERY`] the coordinator reads `/stats` from
//! each live node at the `admin_addr` of its etcd record (with the cluster secret) and
//! keeps [`HISTORY`] of samples in memory. A failed scrape is kept as a sample with
//! its error, so the page can show it; a node whose record disappeared stays listed as
//! gone until its history runs out. Rates and windowed percentiles are derived from
//! the difference of two samples ([`points`]), since the nodes' counters are
//! cumulative.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use strait_node::config::Secret;
use strait_node::schema::NodeRecord;
use strait_node::stats::{Hist, NodeStats};
use tokio::sync::watch;

use crate::store::Store;

/// How often every node is read.
pub const SCRAPE_EVERY: Duration = Duration::from_secs(2);
/// How much history is kept per node (and how long a gone node stays listed).
pub const HISTORY: Duration = Duration::from_secs(15 * 60);
/// Longest wait for one node's answer; a slower node counts as a failed scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Samples a windowed percentile spans (about 10 s at the default interval).
const WINDOW_SAMPLES: usize = 5;

/// One scrape of one node.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Unix time, seconds.
    pub at: f64,
    pub round: u64,
    pub stats: Option<Arc<NodeStats>>,
    /// Why the scrape failed (never a secret).
    pub error: Option<String>,
}

/// One node as the scraper knows it.
#[derive(Debug, Clone)]
pub struct NodeSeries {
    /// The last record seen in etcd.
    pub record: NodeRecord,
    /// When the record disappeared from etcd (unix seconds); `None` while registered.
    pub gone_since: Option<f64>,
    pub samples: VecDeque<Sample>,
}

impl NodeSeries {
    /// The newest successful scrape.
    pub fn latest(&self) -> Option<&Arc<NodeStats>> {
        self.samples.iter().rev().find_map(|s| s.stats.as_ref())
    }

    /// The newest scrape, failed or not.
    pub fn last(&self) -> Option<&Sample> {
        self.samples.back()
    }
}

/// What one round saw of etcd itself.
#[derive(Debug, Clone, Default)]
pub struct RoundInfo {
    pub round: u64,
    pub at: f64,
    /// Listing the nodes in etcd failed: why.
    pub store_error: Option<String>,
}

/// The scraper and its in-memory history, shared with the dashboard.
pub struct Scraper {
    nodes: RwLock<BTreeMap<(String, String), NodeSeries>>,
    info: RwLock<RoundInfo>,
    secret: Option<Secret>,
    http: Client<HttpConnector, Empty<Bytes>>,
}

pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Scraper {
    pub fn new(secret: Option<Secret>) -> Arc<Scraper> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(SCRAPE_TIMEOUT));
        Arc::new(Scraper {
            nodes: RwLock::new(BTreeMap::new()),
            info: RwLock::new(RoundInfo::default()),
            secret,
            http: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Scrapes every [`SCRAPE_EVERY`] until `shutdown` fires.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(SCRAPE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.round(store.as_ref()).await,
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            }
        }
    }

    /// One round: list the nodes, read each one's stats concurrently, record.
    pub async fn round(&self, store: &dyn Store) {
        let at = now_unix();
        let round = self.info.read().map_or(0, |i| i.round) + 1;
        let listed = store.nodes().await;
        let store_error = listed.as_ref().err().map(|e| e.to_string());
        *self.info.write().unwrap_or_else(|e| e.into_inner()) = RoundInfo {
            round,
            at,
            store_error,
        };
        // etcd unreachable: nothing is known about membership; keep what we have.
        let Ok(records) = listed else { return };
        let mut tasks = tokio::task::JoinSet::new();
        for r in &records {
            let url = format!("http://{}/stats", r.admin_addr);
            let key = (r.region.clone(), r.id.clone());
            let (http, secret) = (self.http.clone(), self.secret.clone());
            tasks.spawn(async move { (key, fetch(&http, secret.as_ref(), url).await) });
        }
        let mut results = BTreeMap::new();
        while let Some(Ok((key, res))) = tasks.join_next().await {
            results.insert(key, res);
        }
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        for r in records {
            let key = (r.region.clone(), r.id.clone());
            let (stats, error) = match results.remove(&key) {
                Some(Ok(s)) => (Some(Arc::new(s)), None),
                Some(Err(e)) => (None, Some(e)),
                None => (None, Some("scrape task failed".to_string())),
            };
            let series = nodes.entry(key).or_insert_with(|| NodeSeries {
                record: r.clone(),
                gone_since: None,
                samples: VecDeque::new(),
            });
            series.record = r;
            series.gone_since = None;
            series.samples.push_back(Sample {
                at,
                round,
                stats,
                error,
            });
        }
        let horizon = at - HISTORY.as_secs_f64();
        nodes.retain(|_, s| {
            // Not listed this round: its record is gone from etcd.
            if s.samples.back().is_some_and(|x| x.round != round) {
                s.gone_since.get_or_insert(at);
            }
            while s.samples.front().is_some_and(|x| x.at < horizon) {
                s.samples.pop_front();
            }
            s.gone_since.is_none_or(|g| g >= horizon)
        });
    }

    /// Every node known, registered or gone, by (region, id).
    pub fn nodes(&self) -> Vec<NodeSeries> {
        self.nodes
            .read()
            .map(|n| n.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn info(&self) -> RoundInfo {
        self.info.read().map(|i| i.clone()).unwrap_or_default()
    }
}

/// Reads one node's `/stats`; the reason when that fails (never the secret).
async fn fetch(
    http: &Client<HttpConnector, Empty<Bytes>>,
    secret: Option<&Secret>,
    url: String,
) -> Result<NodeStats, String> {
    let mut req = Request::get(&url);
    if let Some(s) = secret {
        req = req.header(header::AUTHORIZATION, format!("Bearer {}", s.expose()));
    }
    let req = req
        .body(Empty::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let answer = tokio::time::timeout(SCRAPE_TIMEOUT, async {
        let resp = http
            .request(req)
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    })
    .await
    .map_err(|_| format!("no answer within {SCRAPE_TIMEOUT:?}"))??;
    match answer.0 {
            StatusCode::OK => serde_json::from_slice(&answer.1)
                .map_err(|e| format!("unreadable stats: {e}")),
            StatusCode::UNAUTHORIZED => Err(
                "401: the node refuses the cluster secret (set the same STRAIT_CLUSTER_SECRET on nodes and coordinators)"
                    .to_string(),
            ),
            s => Err(format!("answered {s}")),
        }
}

/// Rates and windowed latencies between two scrapes of one node.
#[derive(Debug, Clone, Default)]
pub struct Point {
    pub at: f64,
    pub round: u64,
    pub rps: f64,
    /// Requests answered with a non-2xx status, per second.
    pub errors_ps: f64,
    pub tokens_in_ps: f64,
    pub tokens_out_ps: f64,
    pub gateway_429_ps: f64,
    pub upstream_429_ps: f64,
    /// Request durations observed over the last few scrapes.
    pub latency: Hist,
    pub ttft: Hist,
}

impl Point {
    pub fn error_rate(&self) -> f64 {
        if self.rps > 0.0 {
            (self.errors_ps / self.rps).min(1.0)
        } else {
            0.0
        }
    }

    /// Sums points of one round (a region's nodes); latencies merge their buckets.
    pub fn merge(&mut self, o: &Point) {
        self.at = self.at.max(o.at);
        self.round = self.round.max(o.round);
        self.rps += o.rps;
        self.errors_ps += o.errors_ps;
        self.tokens_in_ps += o.tokens_in_ps;
        self.tokens_out_ps += o.tokens_out_ps;
        self.gateway_429_ps += o.gateway_429_ps;
        self.upstream_429_ps += o.upstream_429_ps;
        merge_hist(&mut self.latency, &o.latency);
        merge_hist(&mut self.ttft, &o.ttft);
    }
}

fn merge_hist(into: &mut Hist, h: &Hist) {
    if into.buckets.is_empty() {
        *into = h.clone();
        return;
    }
    into.count += h.count;
    into.sum += h.sum;
    for (slot, (_, n)) in into.buckets.iter_mut().zip(&h.buckets) {
        slot.1 += n;
    }
}

fn non_2xx(s: &NodeStats) -> u64 {
    s.requests
        .by_status
        .iter()
        .filter(|(code, _)| !code.starts_with('2'))
        .map(|(_, n)| n)
        .sum()
}

/// One point per pair of consecutive successful scrapes; a counter that went down
/// (the node restarted) starts afresh rather than showing a negative rate.
pub fn points(samples: &VecDeque<Sample>) -> Vec<Point> {
    let ok: Vec<(&Sample, &NodeStats)> = samples
        .iter()
        .filter_map(|s| s.stats.as_deref().map(|st| (s, st)))
        .collect();
    let mut out = Vec::new();
    for i in 1..ok.len() {
        let (sa, a) = ok[i - 1];
        let (sb, b) = ok[i];
        let dt = sb.at - sa.at;
        if dt <= 0.0 || b.requests.total < a.requests.total {
            continue;
        }
        let rate = |x: u64, y: u64| y.saturating_sub(x) as f64 / dt;
        // Latencies over a few scrapes, so a quiet 2 s does not blank the chart.
        let w = ok[i.saturating_sub(WINDOW_SAMPLES)..i]
            .iter()
            .find(|(_, s)| s.requests.total <= b.requests.total)
            .map_or(a, |(_, s)| *s);
        out.push(Point {
            at: sb.at,
            round: sb.round,
            rps: rate(a.requests.total, b.requests.total),
            errors_ps: rate(non_2xx(a), non_2xx(b)),
            tokens_in_ps: rate(a.tokens.input, b.tokens.input),
            tokens_out_ps: rate(a.tokens.output, b.tokens.output),
            gateway_429_ps: rate(a.rate_limited.gateway, b.rate_limited.gateway),
            upstream_429_ps: rate(a.rate_limited.upstream, b.rate_limited.upstream),
            latency: b.latency.since(&w.latency),
            ttft: b.ttft.since(&w.ttft),
        });
    }
    out
}

/// Points of several nodes summed round by round (a region's series).
pub fn merge_rounds<'a>(series: impl IntoIterator<Item = &'a Vec<Point>>) -> Vec<Point> {
    let mut by_round: BTreeMap<u64, Point> = BTreeMap::new();
    for pts in series {
        for p in pts {
            by_round.entry(p.round).or_default().merge(p);
        }
    }
    by_round.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_node::stats::Requests;

    fn stats(total: u64, errors: u64, fast: u64, slow: u64) -> NodeStats {
        NodeStats {
            requests: Requests {
                total,
                by_status: [("200".into(), total - errors), ("500".into(), errors)]
                    .into_iter()
                    .collect(),
                by_route: BTreeMap::new(),
            },
            latency: Hist {
                count: fast + slow,
                sum: 0.0,
                buckets: vec![(0.1, fast), (1.0, fast + slow)],
            },
            ..Default::default()
        }
    }

    fn sample(at: f64, round: u64, s: Option<NodeStats>) -> Sample {
        Sample {
            at,
            round,
            error: s.is_none().then(|| "down".to_string()),
            stats: s.map(Arc::new),
        }
    }

    fn record(id: &str, admin_addr: String) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            region: "r1".into(),
            public_addr: "127.0.0.1:1".into(),
            admin_addr,
            version: "0.1.0".into(),
            started_at: String::new(),
            state: strait_node::schema::NodeState::Serving,
            path: Default::default(),
            ready: Default::default(),
            tls: false,
        }
    }

    /// A node admin listener serving `/stats` to holders of `secret` only.
    async fn stats_server(secret: &'static str) -> String {
        let app = axum::Router::new().route(
            "/stats",
            axum::routing::get(move |h: http::HeaderMap| async move {
                let ok = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
                    == Some(&format!("Bearer {secret}"));
                if ok {
                    (
                        StatusCode::OK,
                        serde_json::to_string(&stats(7, 1, 7, 0)).unwrap(),
                    )
                } else {
                    (StatusCode::UNAUTHORIZED, String::new())
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        addr.to_string()
    }

    #[tokio::test]
    async fn failed_scrapes_are_kept_and_vanished_nodes_shown_as_gone() {
        let store = crate::store::MemoryStore::leading(crate::leader::LeaderInfo {
            id: "c1".into(),
            region: "r1".into(),
            url: "http://c1".into(),
        });
        let good = stats_server("the-cluster-secret-01").await;
        store.put_node(record("good", good.clone()));
        // A closed port: nothing listens on port 1.
        store.put_node(record("down", "127.0.0.1:1".into()));
        let scraper = Scraper::new(Some(Secret::new("the-cluster-secret-01")));
        scraper.round(&store).await;
        let nodes = scraper.nodes();
        let by_id = |id: &str| nodes.iter().find(|n| n.record.id == id).unwrap().clone();
        assert_eq!(by_id("good").latest().map(|s| s.requests.total), Some(7));
        let down = by_id("down");
        assert!(down.latest().is_none());
        assert!(
            down.last()
                .unwrap()
                .error
                .as_deref()
                .unwrap()
                .starts_with("unreachable"),
            "{:?}",
            down.last()
        );

        // The wrong secret is a failed scrape that says so.
        let wrong = Scraper::new(Some(Secret::new("not-the-secret-000000")));
        wrong.round(&store).await;
        let n = wrong.nodes();
        let e = n.iter().find(|n| n.record.id == "good").unwrap();
        assert!(e.last().unwrap().error.as_deref().unwrap().contains("401"));

        // The node's record disappears: still listed, as gone, with its history.
        store.remove_node("r1", "good");
        scraper.round(&store).await;
        let gone = scraper
            .nodes()
            .into_iter()
            .find(|n| n.record.id == "good")
            .unwrap();
        assert!(gone.gone_since.is_some());
        assert_eq!(
            gone.samples.len(),
            1,
            "no sample for a round it was not listed in"
        );
        assert_eq!(scraper.info().round, 2);
    }

    #[test]
    fn rates_come_from_differences_and_restarts_do_not_go_negative() {
        let samples: VecDeque<Sample> = [
            sample(0.0, 1, Some(stats(10, 0, 10, 0))),
            sample(2.0, 2, Some(stats(30, 4, 20, 10))),
            sample(4.0, 3, None),
            // Restarted: counters start again from zero.
            sample(6.0, 4, Some(stats(2, 0, 2, 0))),
            sample(8.0, 5, Some(stats(6, 2, 4, 2))),
        ]
        .into_iter()
        .collect();
        let p = points(&samples);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].rps, 10.0);
        assert!((p[0].error_rate() - 0.2).abs() < 1e-9);
        // Half the window's requests took longer than 0.1 s.
        assert!(p[0].latency.quantile(0.99).unwrap() > 0.1);
        assert_eq!(p[1].rps, 2.0);
        assert_eq!(p[1].round, 5);

        let merged = merge_rounds([&p, &p]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].rps, 20.0);
        assert_eq!(merged[0].latency.count, 40);
    }
}
