//! The client workload: workers that resolve the service name through the coordinators'
//! DNS (honouring the answer's TTL), connect to one of the answered addresses, retry on
//! the next address only when the connection could not be made (nothing was sent), and
//! send a mix of plain, streaming and `strait-defer` Messages requests from several keys.
//! Each request carries a correlation id in `metadata.user_id`, which the mock counts.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde::Serialize;

use super::{dns, ClientKey, DNS_NAME};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A client that opens a fresh connection per request (as a client that re-resolves
/// does), with a short connect timeout so a dead address is skipped quickly.
pub fn http_client() -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_connect_timeout(Some(Duration::from_secs(1)));
    conn.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(conn)
}

/// What kind of request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Plain,
    Stream,
    /// `strait-defer: on-outage`
    DeferOnOutage,
    /// `strait-defer: always`
    DeferAlways,
}

/// How one request ended, from the client's side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// A complete 200 (a Message JSON, or a stream that ended with `message_stop`).
    Ok,
    /// 202: queued under this id.
    Deferred { id: String },
    /// An error status. `shaped`: Anthropic's error JSON; `gateway`: made by the node.
    Failed {
        status: u16,
        error_type: String,
        shaped: bool,
        gateway: bool,
    },
    /// A 200 stream that ended with an SSE `error` event (honest: the client knows).
    StreamError,
    /// No address could be connected to: nothing was sent.
    ConnectFailed,
    /// No DNS answer and none cached.
    NoDns,
    /// Sent, then the connection died or the time ran out before a complete answer, or a
    /// stream was cut by a transport error: the client cannot know whether it ran.
    Unknown { why: String },
    /// A 200 whose body ended cleanly but incomplete: a stream without `message_stop`
    /// or `error`, a truncated JSON. The client may believe it finished: lost.
    Lost { why: String },
}

/// One request.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// Correlation id (`metadata.user_id`).
    pub id: String,
    pub key: String,
    pub kind: Kind,
    /// Milliseconds since the workload started.
    pub at_ms: u64,
    pub took_ms: u64,
    pub node: Option<Ipv4Addr>,
    /// Addresses that refused the connection before one answered.
    pub connect_retries: u32,
    pub relayed_via: Option<String>,
    pub outcome: Outcome,
}

/// How much load, for how long.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    pub workers: usize,
    pub duration: Duration,
    pub max_requests: usize,
    /// Pause between one worker's requests.
    pub think: Duration,
    pub request_timeout: Duration,
    pub keys: Vec<ClientKey>,
    pub dns_servers: Vec<SocketAddr>,
    pub dns_ttl: Duration,
    pub port: u16,
    /// Prefix of every correlation id (the scenario's name).
    pub tag: String,
}

/// Runs the workload until `duration`, `max_requests` or `stop` (workers finish the
/// request in hand) and returns every request's record.
pub async fn run(
    spec: WorkloadSpec,
    started: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Record> {
    let spec = Arc::new(spec);
    let client = http_client();
    let issued = Arc::new(AtomicUsize::new(0));
    let records = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..spec.workers {
        let (spec, client, issued, records, stop) = (
            spec.clone(),
            client.clone(),
            issued.clone(),
            records.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut cache: Option<(Instant, Vec<Ipv4Addr>)> = None;
            let mut i = 0usize;
            while started.elapsed() < spec.duration && !stop.load(Relaxed) {
                let n = issued.fetch_add(1, Relaxed);
                if n >= spec.max_requests {
                    break;
                }
                let rec = one(&spec, &client, &mut cache, w, i, n, started).await;
                records.lock().unwrap_or_else(|e| e.into_inner()).push(rec);
                i += 1;
                tokio::time::sleep(spec.think).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut out = std::mem::take(&mut *records.lock().unwrap_or_else(|e| e.into_inner()));
    out.sort_by_key(|r| r.at_ms);
    out
}

fn pick(worker: usize, keys: &[ClientKey]) -> (ClientKey, Kind) {
    let mut rng = rand::rng();
    let key = keys[(worker + rng.random_range(0..keys.len())) % keys.len()].clone();
    let roll: u32 = rng.random_range(0..100);
    let kind = if key.rpm.is_some() {
        // Limited keys are not deferred: a deferral is admitted at delivery, which would
        // blur the count of what the limiter admitted during the run.
        if roll < 55 {
            Kind::Plain
        } else {
            Kind::Stream
        }
    } else if roll < 40 {
        Kind::Plain
    } else if roll < 70 {
        Kind::Stream
    } else if roll < 88 {
        Kind::DeferOnOutage
    } else {
        Kind::DeferAlways
    };
    (key, kind)
}

async fn one(
    spec: &WorkloadSpec,
    client: &HttpClient,
    cache: &mut Option<(Instant, Vec<Ipv4Addr>)>,
    worker: usize,
    i: usize,
    n: usize,
    started: Instant,
) -> Record {
    let (key, kind) = pick(worker, &spec.keys);
    let id = format!("{}-{}-{n}", spec.tag, key.name);
    let at = started.elapsed();
    let mut rec = Record {
        id: id.clone(),
        key: key.name.clone(),
        kind,
        at_ms: at.as_millis() as u64,
        took_ms: 0,
        node: None,
        connect_retries: 0,
        relayed_via: None,
        outcome: Outcome::NoDns,
    };
    // Resolve as a stub resolver would: reuse the answer for its TTL.
    let fresh = cache
        .as_ref()
        .is_some_and(|(t, ips)| t.elapsed() < spec.dns_ttl && !ips.is_empty());
    if !fresh {
        match dns::resolve_any(&spec.dns_servers, DNS_NAME).await {
            Some(ips) if !ips.is_empty() => *cache = Some((Instant::now(), ips)),
            // Keep a stale answer rather than nothing (resolvers serve stale on failure).
            _ => {}
        }
    }
    let Some((_, ips)) = cache.as_ref() else {
        rec.took_ms = (started.elapsed() - at).as_millis() as u64;
        return rec;
    };
    let ips = ips.clone();
    let stream = kind == Kind::Stream;
    let body = serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "stream": stream,
        "metadata": {"user_id": id},
        "messages": [{"role": "user", "content": "chaos"}],
    });
    let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    rec.outcome = Outcome::ConnectFailed;
    for k in 0..ips.len() {
        let ip = ips[(worker + i + k) % ips.len()];
        let mut req = Request::post(format!("http://{ip}:{}/v1/messages", spec.port))
            .header("x-api-key", &key.key)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json");
        match kind {
            Kind::DeferOnOutage => req = req.header("strait-defer", "on-outage"),
            Kind::DeferAlways => req = req.header("strait-defer", "always"),
            _ => {}
        }
        let Ok(req) = req.body(Full::new(body.clone())) else {
            break;
        };
        rec.node = Some(ip);
        let result = tokio::time::timeout(spec.request_timeout, async {
            match client.request(req).await {
                Err(e) if e.is_connect() => None,
                Err(e) => Some((
                    Outcome::Unknown {
                        why: format!("request: {e}"),
                    },
                    None,
                )),
                Ok(resp) => Some(read_answer(resp, stream).await),
            }
        })
        .await;
        match result {
            Err(_) => {
                rec.outcome = Outcome::Unknown {
                    why: "client timeout".into(),
                };
                break;
            }
            Ok(None) => {
                rec.connect_retries += 1;
                continue;
            }
            Ok(Some((o, relayed))) => {
                rec.outcome = o;
                rec.relayed_via = relayed;
                break;
            }
        }
    }
    rec.took_ms = (started.elapsed() - at).as_millis() as u64;
    rec
}

async fn read_answer(
    resp: http::Response<hyper::body::Incoming>,
    stream: bool,
) -> (Outcome, Option<String>) {
    let status = resp.status();
    let relayed = resp
        .headers()
        .get("x-strait-relayed-via")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let gateway = resp
        .headers()
        .get("x-strait-error-source")
        .is_some_and(|v| v == "gateway");
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut cut = None;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    buf.extend_from_slice(&d);
                }
            }
            Some(Err(e)) => {
                cut = Some(e.to_string());
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let outcome = if status == StatusCode::ACCEPTED {
        match serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
        {
            Some(id) => Outcome::Deferred { id },
            None => Outcome::Unknown {
                why: format!("202 without an id (cut: {cut:?})"),
            },
        }
    } else if status == StatusCode::OK && stream {
        if text.contains("event: message_stop") {
            Outcome::Ok
        } else if text.contains("event: error") {
            Outcome::StreamError
        } else if let Some(e) = cut {
            Outcome::Unknown {
                why: format!("stream cut by the transport: {e}"),
            }
        } else {
            Outcome::Lost {
                why: "stream ended without message_stop or error".into(),
            }
        }
    } else if status == StatusCode::OK {
        match (serde_json::from_str::<serde_json::Value>(&text).ok(), cut) {
            (Some(v), _) if v["type"] == "message" => Outcome::Ok,
            (_, Some(e)) => Outcome::Unknown {
                why: format!("body cut: {e}"),
            },
            _ => Outcome::Lost {
                why: "200 with an incomplete body".into(),
            },
        }
    } else {
        let v = serde_json::from_str::<serde_json::Value>(&text).ok();
        let error_type = v
            .as_ref()
            .and_then(|v| v["error"]["type"].as_str())
            .unwrap_or("")
            .to_string();
        let shaped = v.as_ref().is_some_and(|v| {
            v["type"] == "error"
                && v["error"]["type"].is_string()
                && v["error"]["message"].is_string()
        });
        Outcome::Failed {
            status: status.as_u16(),
            error_type,
            shaped,
            gateway,
        }
    };
    (outcome, relayed)
}

/// What became of one deferred id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeferredEnd {
    /// `GET` gave the stored 200.
    Delivered,
    /// `GET` gave a final non-200 (`x-strait-deferred-status`: outcome_unknown,
    /// dead_lettered, or the upstream's own error).
    Ended { status: u16, state: String },
    /// `GET` answered 404: the id was never queued.
    Unknown404,
    /// Still open when the polling stopped.
    Open,
}

/// Polls every deferred id at a node of its region (the id names the region) until it
/// ends or `limit` passes. `nodes`: region name and public address of every node.
pub async fn settle_deferred(
    ids: &[(String, String)],
    nodes: &[(String, SocketAddr)],
    keys: &[ClientKey],
    limit: Duration,
) -> Vec<(String, DeferredEnd)> {
    let client = http_client();
    let deadline = Instant::now() + limit;
    let mut open: Vec<(String, String)> = ids.to_vec();
    let mut ended = Vec::new();
    let mut round = 0usize;
    while !open.is_empty() {
        let mut still = Vec::new();
        for (id, key_name) in open {
            let region = id
                .strip_prefix("dfr_")
                .and_then(|r| r.rsplit_once('_'))
                .map(|(r, _)| r.to_string())
                .unwrap_or_default();
            let key = keys
                .iter()
                .find(|k| k.name == key_name)
                .map(|k| k.key.clone())
                .unwrap_or_default();
            let addrs: Vec<SocketAddr> = nodes
                .iter()
                .filter(|(r, _)| *r == region)
                .map(|(_, a)| *a)
                .collect();
            let mut end = None;
            for k in 0..addrs.len() {
                let addr = addrs[(round + k) % addrs.len()];
                let req = Request::get(format!("http://{addr}/v1/strait/deferred/{id}"))
                    .header("x-api-key", &key)
                    .header("anthropic-version", "2023-06-01")
                    .body(Full::new(Bytes::new()));
                let Ok(req) = req else { break };
                let resp = tokio::time::timeout(Duration::from_secs(3), client.request(req)).await;
                let Ok(Ok(resp)) = resp else { continue };
                let status = resp.status();
                let state = resp
                    .headers()
                    .get("x-strait-deferred-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let _ = resp.into_body().collect().await;
                end = match status.as_u16() {
                    202 => None,
                    200 => Some(DeferredEnd::Delivered),
                    404 => Some(DeferredEnd::Unknown404),
                    // The node's own trouble answering (Redis away): ask again later.
                    503 if state.is_empty() => None,
                    s => Some(DeferredEnd::Ended { status: s, state }),
                };
                break;
            }
            match end {
                Some(e) => ended.push((id, e)),
                None => still.push((id, key_name)),
            }
        }
        open = still;
        if open.is_empty() || Instant::now() > deadline {
            break;
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ended.extend(open.into_iter().map(|(id, _)| (id, DeferredEnd::Open)));
    ended
}
