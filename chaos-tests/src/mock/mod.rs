//! Mock Anthropic API server: configuration, startup, and the handle tests steer it with.
//!
//! The mock speaks HTTP/1.1 and HTTP/2 (h2c prior knowledge, or ALPN over TLS) and answers
//! like `api.anthropic.com`: Anthropic-shaped errors with `request-id`, rate-limit headers,
//! deterministic replies (see the crate README for the token formula), injectable faults, and
//! Anthropic's account model (organisations, request limits, refused keys and organisations).

mod accounts;
mod api;
mod conn;
mod faults;
mod messages;
mod ratelimit;
mod response;
mod service;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_rustls::TlsAcceptor;

pub use accounts::{MockEndpoint, MockLimit};
pub use faults::{Cut, Fault, FaultParseError, Pacing, DEFAULT_DRIP_BYTES};
pub use ratelimit::RateLimits;

use crate::tls::SelfSignedCert;

/// Default HTTP/2 stream cap per connection (see [`MockConfig::h2_max_streams`]).
pub const DEFAULT_H2_MAX_STREAMS: u32 = 100;

/// How a [`MockUpstream`] behaves.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Where to listen; port 0 picks a free one.
    pub addr: SocketAddr,
    /// Serve HTTPS with a fresh self-signed CA (see [`MockHandle::cert_pem`]).
    pub tls: bool,
    /// Keep [`RecordedRequest`]s. Off for benchmarks.
    pub record: bool,
    /// How many recorded requests to keep (oldest are dropped first).
    pub max_recorded: usize,
    /// Default reply pacing and length.
    pub pacing: Pacing,
    /// Accepted API keys; `None` accepts any non-empty key.
    pub valid_keys: Option<Vec<String>>,
    /// Limits reported in the rate-limit headers.
    pub rate_limits: RateLimits,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` on HTTP/2 connections: past it a client must
    /// wait or open another connection. 100 by default, the floor RFC 9113
    /// recommends, so a gateway that assumes more is caught.
    pub h2_max_streams: u32,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: false,
            record: true,
            max_recorded: 10_000,
            pacing: Pacing::default(),
            valid_keys: None,
            rate_limits: RateLimits::default(),
            h2_max_streams: DEFAULT_H2_MAX_STREAMS,
        }
    }
}

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: http::Method,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    pub version: http::Version,
    /// Header names are lowercase; non-UTF-8 values are converted lossily.
    pub headers: Vec<(String, String)>,
    /// Empty for `POST /v1/files`, whose bytes are counted, not kept.
    pub body: Bytes,
    /// Bytes of request body received.
    pub body_len: u64,
    pub received_at: Instant,
}

impl RecordedRequest {
    /// The first value of a header (name in lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the handle and every connection.
pub(crate) struct State {
    base_url: String,
    record: bool,
    max_recorded: usize,
    pacing: RwLock<Pacing>,
    valid_keys: RwLock<Option<HashSet<String>>>,
    key_faults: RwLock<HashMap<String, Fault>>,
    // Fast-path flags so requests skip the locks when no fault is configured.
    has_key_faults: AtomicBool,
    queued: AtomicUsize,
    queue: Mutex<VecDeque<Fault>>,
    recorded: Mutex<VecDeque<RecordedRequest>>,
    total: AtomicU64,
    /// TCP connections accepted since start.
    pub(crate) connections: AtomicU64,
    limits: ratelimit::RateWindow,
    accounts: accounts::Accounts,
    batches: Mutex<api::Batches>,
    files: Mutex<Vec<api::FileObject>>,
    /// Messages executed (answered, not refused by a fault or a limit), by correlation id.
    executed: Mutex<HashMap<String, u32>>,
}

impl State {
    fn new(config: &MockConfig, base_url: String) -> State {
        State {
            base_url,
            record: config.record,
            max_recorded: config.max_recorded,
            pacing: RwLock::new(config.pacing),
            valid_keys: RwLock::new(config.valid_keys.clone().map(|k| k.into_iter().collect())),
            key_faults: RwLock::new(HashMap::new()),
            has_key_faults: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
            recorded: Mutex::new(VecDeque::new()),
            total: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            limits: ratelimit::RateWindow::new(config.rate_limits),
            accounts: accounts::Accounts::default(),
            batches: Mutex::new(api::Batches::default()),
            files: Mutex::new(Vec::new()),
            executed: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a Messages request the mock is about to execute under its correlation id:
    /// `metadata.user_id` of the body, the one field a client sets that the API (and so
    /// every gateway) passes through. Counted even when recording is off.
    pub(crate) fn count_executed(&self, body: &[u8]) {
        // Cheap test first: most bench bodies carry no metadata.
        if !body.windows(7).any(|w| w == b"user_id") {
            return;
        }
        let id = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["metadata"]["user_id"].as_str().map(str::to_owned));
        if let Some(id) = id {
            *lock(&self.executed).entry(id).or_insert(0) += 1;
        }
    }

    fn record(&self, parts: &Parts, body: Bytes, body_len: u64, received_at: Instant) {
        self.total.fetch_add(1, Relaxed);
        if !self.record || self.max_recorded == 0 {
            return;
        }
        let request = RecordedRequest {
            method: parts.method.clone(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
            version: parts.version,
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
            body_len,
            received_at,
        };
        let mut recorded = lock(&self.recorded);
        if recorded.len() >= self.max_recorded {
            recorded.pop_front();
        }
        recorded.push_back(request);
    }

    fn key_allowed(&self, key: &str) -> bool {
        let keys = self
            .valid_keys
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        keys.as_ref().is_none_or(|k| k.contains(key))
    }

    fn pop_fault(&self) -> Option<Fault> {
        if self.queued.load(Relaxed) == 0 {
            return None;
        }
        let mut queue = lock(&self.queue);
        let fault = queue.pop_front();
        self.queued.store(queue.len(), Relaxed);
        fault
    }

    fn key_fault(&self, key: &str) -> Option<Fault> {
        if !self.has_key_faults.load(Relaxed) {
            return None;
        }
        let faults = self
            .key_faults
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        faults.get(key).cloned()
    }

    pub(crate) fn pacing(&self) -> Pacing {
        *self.pacing.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn batches(&self) -> MutexGuard<'_, api::Batches> {
        lock(&self.batches)
    }

    fn files(&self) -> MutexGuard<'_, Vec<api::FileObject>> {
        lock(&self.files)
    }
}

/// Starts mock servers.
pub struct MockUpstream;

impl MockUpstream {
    /// Binds `config.addr` and serves until the handle is dropped or shut down.
    pub async fn start(config: MockConfig) -> io::Result<MockHandle> {
        let listener = TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let (tls, cert_pem) = if config.tls {
            let cert = SelfSignedCert::localhost()?;
            let server = cert.server_config(&[b"h2", b"http/1.1"])?;
            (
                Some(TlsAcceptor::from(server)),
                Some(cert.ca_pem().to_owned()),
            )
        } else {
            (None, None)
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}");
        let state = Arc::new(State::new(&config, url.clone()));
        let task = tokio::spawn(conn::accept_loop(
            listener,
            tls,
            config.h2_max_streams,
            state.clone(),
        ));
        Ok(MockHandle {
            addr,
            url,
            cert_pem,
            state,
            abort: task.abort_handle(),
            task: Mutex::new(Some(task)),
        })
    }
}

/// A running mock. Dropping it stops the server and closes every connection.
pub struct MockHandle {
    addr: SocketAddr,
    url: String,
    cert_pem: Option<String>,
    state: Arc<State>,
    abort: AbortHandle,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl MockHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (or `https://` with TLS).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// PEM of the CA that signed the server certificate (TLS only); trust it in clients.
    pub fn cert_pem(&self) -> Option<&str> {
        self.cert_pem.as_deref()
    }

    /// Recorded requests, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.recorded).iter().cloned().collect()
    }

    /// TCP connections accepted since start (clients reusing connections open few).
    pub fn connections_accepted(&self) -> u64 {
        self.state.connections.load(Relaxed)
    }

    /// Requests received since start, counted even when recording is off.
    pub fn request_count(&self) -> u64 {
        self.state.total.load(Relaxed)
    }

    /// How often each correlation id (`metadata.user_id`) was executed: a Messages request
    /// the mock answered with a response of its own making (not a fault's status, not a
    /// reset before the answer, not its own rate limit). Above 1 means a duplicate.
    pub fn executed_counts(&self) -> HashMap<String, u32> {
        lock(&self.state.executed).clone()
    }

    /// Forgets the executed counts.
    pub fn clear_executed(&self) {
        lock(&self.state.executed).clear();
    }

    /// Forgets recorded requests (the count keeps running).
    pub fn clear_requests(&self) {
        lock(&self.state.recorded).clear();
    }

    /// Every request authenticated with `key` gets `fault` until cleared.
    pub fn set_key_fault(&self, key: &str, fault: Fault) {
        let mut faults = self
            .state
            .key_faults
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        faults.insert(key.to_owned(), fault);
        self.state.has_key_faults.store(true, Relaxed);
    }

    /// Removes the fault for one key.
    pub fn clear_key_fault(&self, key: &str) {
        let mut faults = self
            .state
            .key_faults
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        faults.remove(key);
        self.state.has_key_faults.store(!faults.is_empty(), Relaxed);
    }

    /// Removes all key faults.
    pub fn clear_key_faults(&self) {
        let mut faults = self
            .state
            .key_faults
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        faults.clear();
        self.state.has_key_faults.store(false, Relaxed);
    }

    /// Queues a fault for the next authenticated request without an `x-mock-fault` header
    /// (FIFO: each queued fault is used once). Queued faults win over key faults.
    pub fn push_fault(&self, fault: Fault) {
        let mut queue = lock(&self.state.queue);
        queue.push_back(fault);
        self.state.queued.store(queue.len(), Relaxed);
    }

    /// Drops queued faults that no request has used yet.
    pub fn clear_queued_faults(&self) {
        let mut queue = lock(&self.state.queue);
        queue.clear();
        self.state.queued.store(0, Relaxed);
    }

    /// Replaces the accepted keys; `None` accepts any non-empty key.
    pub fn set_valid_keys(&self, keys: Option<Vec<String>>) {
        let mut valid = self
            .state
            .valid_keys
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *valid = keys.map(|k| k.into_iter().collect());
    }

    /// Changes the default pacing for requests that arrive from now on.
    pub fn set_pacing(&self, pacing: Pacing) {
        *self
            .state
            .pacing
            .write()
            .unwrap_or_else(PoisonError::into_inner) = pacing;
    }

    /// Puts `key` in organisation `org`. Keys of one organisation share its limits and its
    /// billing state. A key never given an organisation is an organisation of its own, named
    /// by the key itself (so `set_org_billing_error(key, true)` works for a lone key).
    pub fn set_key_org(&self, key: &str, org: &str) {
        self.state.accounts.set_key_org(key, org);
    }

    /// Every organisation gets its own bucket with this limit for this endpoint and, for
    /// Messages, this model class (`Some("sonnet")`; the class of a request is `opus`,
    /// `sonnet` or `haiku` when its `model` contains that word, else the model id). `None`
    /// is the endpoint's limit; for Messages it applies to each class separately, unless
    /// that class has a limit of its own. Other endpoints ignore the class: each has one
    /// limit. Setting a limit refills every bucket.
    pub fn set_limit(&self, endpoint: MockEndpoint, model_class: Option<&str>, limit: MockLimit) {
        self.state.accounts.set_limit(endpoint, model_class, limit);
    }

    /// Removes every limit (and bucket).
    pub fn clear_limits(&self) {
        self.state.accounts.clear_limits();
    }

    /// 401 `authentication_error` ("invalid x-api-key") for this key from now on.
    pub fn revoke_key(&self, key: &str) {
        self.state.accounts.revoke_key(key);
    }

    /// 403 `permission_error` for this key from now on (a key of another workspace, say).
    pub fn forbid_key(&self, key: &str) {
        self.state.accounts.forbid_key(key);
    }

    /// 402 `billing_error` for every key of the organisation while on.
    pub fn set_org_billing_error(&self, org: &str, on: bool) {
        self.state.accounts.set_org_billing_error(org, on);
    }

    /// 400 `invalid_request_error` "You have reached your specified API usage limits. You
    /// will regain access on <first of next month> at 00:00 UTC." for every key of the
    /// organisation while on.
    pub fn set_org_spend_limit(&self, org: &str, on: bool) {
        self.state.accounts.set_org_spend_limit(org, on);
    }

    /// How many requests the mock refused with 429 because of a limit (faults not counted).
    pub fn rate_limited_count(&self) -> u64 {
        self.state.accounts.rate_limited_count()
    }

    /// Stops accepting, closes every connection, and waits until the port is released.
    pub async fn shutdown(&self) {
        self.abort.abort();
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        self.abort.abort();
    }
}
