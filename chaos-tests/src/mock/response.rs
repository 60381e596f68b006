//! Response building blocks shared by every endpoint: body type, ids, error shape, paced sending.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use rand::Rng;
use serde::Serialize;
use tokio::sync::mpsc;

use super::conn::ConnCtl;
use super::faults::{Cut, Fault};
use super::State;

pub(crate) type Resp = Response<MockBody>;

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A whole body, or frames produced over time by a task (streams, faults).
pub(crate) enum MockBody {
    Full(Option<Bytes>),
    Channel {
        rx: mpsc::Receiver<Bytes>,
        /// Announced as `content-length` so a truncated body is detectable.
        len: Option<u64>,
    },
}

impl MockBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> MockBody {
        MockBody::Full(Some(bytes.into()))
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            MockBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Channel { rx, .. } => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Channel { len: Some(n), .. } => SizeHint::with_exact(*n),
            MockBody::Channel { len: None, .. } => SizeHint::default(),
        }
    }
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `prefix` followed by 24 random base62 characters, like Anthropic's ids.
pub(crate) fn new_id(prefix: &str) -> String {
    let mut rng = rand::rng();
    let mut id = String::with_capacity(prefix.len() + 24);
    id.push_str(prefix);
    for _ in 0..24 {
        id.push(char::from(BASE62[rng.random_range(0..BASE62.len())]));
    }
    id
}

fn request_id() -> HeaderValue {
    HeaderValue::try_from(new_id("req_")).unwrap_or_else(|_| HeaderValue::from_static("req_0"))
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn rfc3339(unix_secs: u64) -> String {
    i64::try_from(unix_secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// A response with a `request-id` and the given content type.
pub(crate) fn with_body(status: StatusCode, content_type: HeaderValue, body: MockBody) -> Resp {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(REQUEST_ID, request_id());
    resp
}

/// Anthropic's error `type` for an HTTP status.
pub(crate) fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        405..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// The message Anthropic gives with a status when there is nothing more specific to say.
pub(crate) fn default_message(status: u16) -> &'static str {
    match status {
        401 => "invalid x-api-key",
        402 => "There is an issue with your organization's billing or payment information.",
        403 => "Your API key does not have permission to use the specified resource.",
        404 => "Not found",
        413 => "Request exceeds the maximum allowed number of bytes.",
        429 => "This request would exceed your organization's rate limit. Please try again later.",
        529 => "Overloaded",
        400..=499 => "Invalid request",
        _ => "Internal server error",
    }
}

#[derive(Serialize)]
pub(crate) struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

impl<'a> ErrorBody<'a> {
    pub(crate) fn new(kind: &'static str, message: &'a str) -> Self {
        ErrorBody {
            kind: "error",
            error: ErrorDetail { kind, message },
        }
    }
}

/// An Anthropic-shaped error response.
pub(crate) fn error(status: u16, message: &str) -> Resp {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body =
        serde_json::to_vec(&ErrorBody::new(error_type(status), message)).unwrap_or_else(|_| {
            br#"{"type":"error","error":{"type":"api_error","message":"mock"}}"#.to_vec()
        });
    with_body(code, JSON, MockBody::full(body))
}

/// The response for a `status` fault, with `retry-after` and rate-limit headers.
pub(crate) fn fault_error(state: &State, fault: &Fault, status: u16) -> Resp {
    let mut resp = error(status, default_message(status));
    let headers = resp.headers_mut();
    if let Some(secs) = fault.retry_after {
        headers.insert(RETRY_AFTER, secs.into());
    }
    let exhausted_until = fault
        .exhausted
        .then(|| now_secs().saturating_add(fault.retry_after.unwrap_or(0).max(3600)));
    state
        .limits
        .write_headers(headers, state.limits.peek(), exhausted_until);
    resp
}

/// Sends body pieces to the connection, applying drip pacing, and knows how to stall or
/// reset. Every wait also watches for the client going away so no task outlives it for long.
pub(crate) struct Sender {
    tx: mpsc::Sender<Bytes>,
    drip: Option<(Duration, usize)>,
    ctl: Arc<ConnCtl>,
    started: bool,
}

impl Sender {
    pub(crate) fn new(fault: &Fault, ctl: Arc<ConnCtl>) -> (Sender, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(16);
        (
            Sender {
                tx,
                drip: fault.drip_plan(),
                ctl,
                started: false,
            },
            rx,
        )
    }

    /// Waits `delay`; false if the client is gone.
    pub(crate) async fn pause(&self, delay: Duration) -> bool {
        if delay.is_zero() {
            return !self.tx.is_closed();
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.tx.closed() => false,
        }
    }

    /// Queues `bytes` (in drip pieces if set); false if the client is gone.
    pub(crate) async fn send(&mut self, mut bytes: Bytes) -> bool {
        let Some((delay, size)) = self.drip else {
            return self.tx.send(bytes).await.is_ok();
        };
        while !bytes.is_empty() {
            if self.started && !self.pause(delay).await {
                return false;
            }
            self.started = true;
            let piece = bytes.split_to(size.min(bytes.len()));
            if self.tx.send(piece).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Never sends anything again; returns once the client has gone.
    pub(crate) async fn stall(self) {
        self.tx.closed().await;
    }

    /// Aborts the connection once what was sent so far has had a chance to reach the socket;
    /// an RST discards unsent data, so aborting at once could swallow the promised units.
    pub(crate) async fn reset(self) {
        for _ in 0..2000 {
            if self.tx.capacity() == self.tx.max_capacity() || self.tx.is_closed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        self.ctl.abort();
        // Dropping the sender now would end the body cleanly, and hyper could still write
        // the final chunk before the connection task acts on the abort.
        self.tx.closed().await;
    }
}

/// A JSON (or JSONL) body with the fault's body parts applied: drip, stall or reset after
/// N bytes. `error-after` has no JSON equivalent and is ignored here.
pub(crate) fn body_with_faults(body: Bytes, fault: &Fault, ctl: &Arc<ConnCtl>) -> MockBody {
    let cut = match fault.cut {
        Some(Cut::ErrorAfter(_)) | None => None,
        other => other,
    };
    if cut.is_none() && fault.drip.is_none() {
        return MockBody::full(body);
    }
    let len = body.len() as u64;
    let (mut out, rx) = Sender::new(fault, ctl.clone());
    tokio::spawn(async move {
        match cut {
            Some(Cut::StallAfter(n)) => {
                let head = body.slice(..n.min(body.len()));
                if head.is_empty() || out.send(head).await {
                    out.stall().await;
                }
            }
            Some(Cut::ResetAfter(n)) => {
                let head = body.slice(..n.min(body.len()));
                if head.is_empty() || out.send(head).await {
                    out.reset().await;
                }
            }
            _ => {
                out.send(body).await;
            }
        }
    });
    MockBody::Channel { rx, len: Some(len) }
}
