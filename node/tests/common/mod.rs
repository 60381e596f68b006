//! Shared harness for the node's integration tests: a node started in process on
//! port 0 in front of the mock upstream, and a small HTTP client that records when
//! each body chunk arrived.
#![allow(dead_code)]

pub mod deferred;
pub mod etcd;
pub mod process;
pub mod redis;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use strait_chaos::mock::{MockConfig, MockHandle, MockUpstream};
use strait_node::config::{RawConfig, Secret};
use strait_node::Node;

pub const UPSTREAM_KEYS: [&str; 2] = ["sk-ant-upstream-one-0001", "sk-ant-upstream-two-0002"];
pub const CLIENT_KEY: &str = "strait-client-key-alpha";

/// A node in managed mode (two upstream keys, one client key) and its mock upstream.
pub struct Harness {
    pub node: Option<Node>,
    pub mock: MockHandle,
    pub url: String,
    pub admin: String,
    /// The node's state directory (its deferred spool): one per node, removed at the end.
    pub state: tempfile::TempDir,
}

impl Harness {
    pub async fn managed() -> Harness {
        Harness::build(MockConfig::default(), |_| {}, &UPSTREAM_KEYS, &[CLIENT_KEY]).await
    }

    pub async fn passthrough() -> Harness {
        Harness::build(MockConfig::default(), |_| {}, &[], &[]).await
    }

    /// Starts the mock with `mock`, then a node whose raw config `tweak` may change.
    pub async fn build(
        mock: MockConfig,
        tweak: impl FnOnce(&mut RawConfig),
        upstream_keys: &[&str],
        client_keys: &[&str],
    ) -> Harness {
        let mock = MockUpstream::start(mock)
            .await
            .expect("mock upstream starts");
        let mut raw = RawConfig::default();
        raw.listen.public = "127.0.0.1:0".into();
        raw.listen.admin = "127.0.0.1:0".into();
        raw.upstream.base_url = mock.url().to_string();
        raw.log.access_log = false;
        let state = tempfile::tempdir().expect("a state directory");
        raw.cluster.state_dir = state.path().to_path_buf();
        quiet_probes(&mut raw);
        one_event_loop(&mut raw);
        tweak(&mut raw);
        let config = raw
            .validate(
                upstream_keys.iter().map(|k| Secret::new(*k)).collect(),
                client_keys.iter().map(|k| Secret::new(*k)).collect(),
            )
            .expect("test config is valid");
        let node = Node::start(config).await.expect("node starts");
        let url = format!("http://{}", node.public_addr());
        let admin = format!("http://{}", node.admin_addr());
        Harness {
            node: Some(node),
            mock,
            url,
            admin,
            state,
        }
    }

    /// A managed node whose raw config `tweak` may change, in front of a default mock.
    pub async fn managed_with(tweak: impl FnOnce(&mut RawConfig)) -> Harness {
        Harness::build(MockConfig::default(), tweak, &UPSTREAM_KEYS, &[CLIENT_KEY]).await
    }

    /// A Messages request with the client key and any extra headers.
    pub async fn message(&self, stream: bool, extra: &[(&str, &str)]) -> Resp {
        let mut headers = auth(CLIENT_KEY).to_vec();
        headers.extend_from_slice(extra);
        post_json(
            &format!("{}/v1/messages", self.url),
            &headers,
            &message_body(stream),
        )
        .await
    }

    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("node running")
    }

    pub async fn metrics(&self) -> String {
        let r = get(&format!("{}/metrics", self.admin), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        r.text()
    }
}

/// In-process nodes serve on one event loop unless the test asks for more (its
/// `tweak` comes after this; event_loops.rs does): a loop on a thread of its own can
/// hand a response to the test before the node has counted it, and many tests read
/// `/metrics` or the mock's counts right after a response. Tests of the binary run its
/// default, one loop per core.
pub fn one_event_loop(raw: &mut RawConfig) {
    raw.runtime.workers = Some(1);
}

/// Keeps the node's active path probes (`GET /v1/models`, every 2 s by default) out
/// of a test about something else: they would show in the mock's request and
/// connection counts. Tests of path health (path_health.rs) set their own interval.
pub fn quiet_probes(raw: &mut RawConfig) {
    raw.health.probe_interval = Duration::from_secs(3600);
}

/// A finished response, with the arrival time of each body chunk.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub chunks: Vec<(Duration, Bytes)>,
    pub version: http::Version,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an Anthropic-shaped error made by the gateway.
    pub fn assert_gateway_error(&self, status: u16, kind: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        let v = self.json();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert_eq!(self.header("x-strait-error-source"), Some("gateway"));
        assert!(self.header("x-strait-request-id").is_some());
    }

    /// SSE event names in order.
    pub fn event_names(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter_map(|l| l.strip_prefix("event: ").map(str::to_string))
            .collect()
    }

    /// A 200 event stream that ran to its `message_stop`.
    pub fn assert_stream_finished(&self) {
        assert_eq!(self.status, 200, "{}", self.text());
        assert_eq!(
            self.event_names().last().map(String::as_str),
            Some("message_stop"),
            "the stream finished: {}",
            self.text()
        );
    }
}

/// Waits up to 10 s for a drain started as `tokio::spawn(node.drain())`; how many
/// responses and connections it cut.
pub async fn drain_result(drain: tokio::task::JoinHandle<usize>) -> usize {
    tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("drain ends")
        .unwrap()
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(30), client().request(req))
        .await
        .expect("response within 30 s")
        .expect("request succeeds at the HTTP level");
    collect(resp, started).await
}

pub async fn collect(resp: http::Response<hyper::body::Incoming>, started: Instant) -> Resp {
    let (parts, mut body) = resp.into_parts();
    let mut chunks = Vec::new();
    let mut all = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("body frame within 30 s")
    {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    all.extend_from_slice(&d);
                    chunks.push((started.elapsed(), d));
                }
            }
            Err(_) => break,
        }
    }
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: all.into(),
        chunks,
        version: parts.version,
    }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    send(Method::GET, url, headers, Bytes::new()).await
}

pub async fn post_json(url: &str, headers: &[(&str, &str)], body: &serde_json::Value) -> Resp {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    send(Method::POST, url, &h, body.to_string()).await
}

/// Headers an Anthropic SDK sends, with the given key.
pub fn sdk_headers(key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-api-key", key.to_string()),
        ("anthropic-version", "2023-06-01".to_string()),
    ]
}

pub fn auth(key: &str) -> [(&'static str, &str); 2] {
    [("x-api-key", key), ("anthropic-version", "2023-06-01")]
}

pub fn message_body(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": "Hello, Claude"}],
    })
}

/// A free port on 127.0.0.1 (bound, then released for a process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of one series (its name and labels as written) on an admin listener's
/// `/metrics`; 0 when absent.
pub async fn metric_at(admin: &str, series: &str) -> f64 {
    let m = get(&format!("{admin}/metrics"), &[]).await.text();
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A free address on loopback, for tests that need a port nothing listens on.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Polls `check` every 20 ms until it holds and returns how long that took; panics,
/// naming `what`, after `limit`.
pub async fn eventually(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}
