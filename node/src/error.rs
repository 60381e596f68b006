//! The node's one error type: every failure is classified once here and mapped to an
//! Anthropic-shaped HTTP response in exactly one place ([`Error::into_response`]):
//! status, fields and body bytes. It knows nothing of the node's response bodies
//! (any body made from bytes will do), so every layer can use it.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::meta::REQUEST_ID;

/// Response header set on every response the gateway itself made (as opposed to one
/// passed through from the upstream), so clients and operators can tell them apart.
pub const GATEWAY_ERROR_HEADER: &str = "x-strait-error-source";
/// On a gateway 429: always `gateway`, so clients can tell it from an upstream 429.
pub const RATELIMITED_HEADER: &str = "x-strait-ratelimited";
/// On a gateway 429 because every upstream key is cooling for the request's
/// upstream limit scope: that scope (`messages/sonnet`, `count_tokens`, ...).
pub const UPSTREAM_SCOPE_HEADER: &str = "x-strait-upstream-scope";

/// What went wrong, decided once where the failure is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client's request is malformed (bad JSON, bad header).
    InvalidRequest,
    /// No client key, or one the node does not know.
    Authentication,
    /// The key is known but may not do this.
    Permission,
    /// No such route on the gateway.
    NotFound,
    /// The route exists, but not for this method (or the method is not one the API uses).
    MethodNotAllowed,
    /// Body over the configured limit.
    RequestTooLarge,
    /// Request headers over the configured limit (431).
    HeadersTooLarge,
    /// The client went silent, or too slow, while sending its request body (408).
    RequestTimeout,
    /// The gateway refused for rate or quota reasons (e.g. every upstream key cooling down).
    RateLimited,
    /// Could not connect to the upstream (DNS, TCP, TLS).
    UpstreamConnect,
    /// The upstream did not answer within the read timeout.
    UpstreamTimeout,
    /// The upstream broke the protocol or the connection mid-response.
    UpstreamProtocol,
    /// The node is draining or over a capacity limit.
    Unavailable,
    /// No upstream key of the pool can serve: each was refused by the upstream
    /// (retired) or its organisation rests after a billing or spend-limit error.
    NoUpstreamKey,
    /// A deferred request whose result has expired or that was cancelled (410).
    Gone,
    /// The request conflicts with the resource's state: cancelling a deferred request
    /// already being delivered (409).
    Conflict,
    /// An `Idempotency-Key` used again with another request body (422, as the IETF
    /// httpapi draft asks).
    IdempotencyMismatch,
    /// A bug or an unexpected local failure.
    Internal,
    /// Configuration is invalid (start-up and `--check-config` only).
    Config,
}

/// The crate's error: a kind, a client-safe message and an optional retry hint.
///
/// The message is shown to clients, so it must never contain secrets or upstream
/// payloads; `detail` is for logs only and is likewise free of secrets.
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: Cow<'static, str>,
    /// Log-only context (e.g. the underlying I/O error text).
    pub detail: Option<String>,
    /// Seconds the client should wait, sent as `retry-after`.
    pub retry_after: Option<Duration>,
    /// For a 429 made because every upstream key cools for one scope: the scope,
    /// sent as [`UPSTREAM_SCOPE_HEADER`].
    pub upstream_scope: Option<String>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            message: message.into(),
            detail: None,
            retry_after: None,
            upstream_scope: None,
        }
    }

    pub fn with_detail(mut self, detail: impl std::fmt::Display) -> Self {
        self.detail = Some(detail.to_string());
        self
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Marks a 429 as caused by upstream keys cooling for `scope`.
    pub fn with_upstream_scope(mut self, scope: String) -> Self {
        self.upstream_scope = Some(scope);
        self
    }

    pub fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    /// HTTP status, chosen to match what Anthropic's API returns for the same class
    /// of failure. Exhaustive on purpose: a new kind must decide its status.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Authentication => StatusCode::UNAUTHORIZED,
            ErrorKind::Permission => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::UpstreamConnect | ErrorKind::UpstreamProtocol => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Unavailable | ErrorKind::NoUpstreamKey => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Gone => StatusCode::GONE,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Internal | ErrorKind::Config => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error.type` string of Anthropic's error object.
    pub fn anthropic_type(&self) -> &'static str {
        match self.kind {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::Permission => "permission_error",
            ErrorKind::NotFound | ErrorKind::Gone => "not_found_error",
            ErrorKind::Conflict | ErrorKind::IdempotencyMismatch => "invalid_request_error",
            // Anthropic has no type of its own for this; the request is malformed.
            ErrorKind::MethodNotAllowed => "invalid_request_error",
            ErrorKind::RequestTooLarge => "request_too_large",
            // Anthropic has no type of its own for this; it is a malformed request.
            ErrorKind::HeadersTooLarge => "invalid_request_error",
            // Likewise: the request did not arrive whole.
            ErrorKind::RequestTimeout => "invalid_request_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Unavailable => "overloaded_error",
            // Not overloaded_error: waiting a few seconds, as SDKs do for that, does
            // not bring a refused key back.
            ErrorKind::NoUpstreamKey
            | ErrorKind::UpstreamConnect
            | ErrorKind::UpstreamTimeout
            | ErrorKind::UpstreamProtocol
            | ErrorKind::Internal
            | ErrorKind::Config => "api_error",
        }
    }

    /// Short stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self.kind {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Authentication => "authentication",
            ErrorKind::Permission => "permission",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::RequestTooLarge => "too_large",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::UpstreamConnect => "upstream_connect",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamProtocol => "upstream_protocol",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::NoUpstreamKey => "no_upstream_key",
            ErrorKind::Gone => "gone",
            ErrorKind::Conflict => "conflict",
            ErrorKind::IdempotencyMismatch => "idempotency_mismatch",
            ErrorKind::Internal => "internal",
            ErrorKind::Config => "config",
        }
    }

    /// Anthropic's error JSON: `{"type":"error","error":{"type":..,"message":..}}`.
    pub fn body_json(&self) -> String {
        serde_json::json!({
            "type": "error",
            "error": {"type": self.anthropic_type(), "message": self.message},
        })
        .to_string()
    }

    /// The SSE form, for a failure after a stream has started: the client sees an
    /// `error` event instead of a clean end.
    pub fn sse_event(&self) -> Bytes {
        Bytes::from(format!("event: error\ndata: {}\n\n", self.body_json()))
    }

    /// The one place a gateway-made error becomes an HTTP response.
    pub fn into_response<B: From<Bytes>>(self, request_id: &HeaderValue) -> Response<B> {
        let mut resp = self.bare_response();
        resp.headers_mut().insert(REQUEST_ID, request_id.clone());
        resp
    }

    /// The response without a request id: for requests refused before they got one
    /// (a malformed or oversized head, answered by the HTTP/1.1 server itself).
    pub fn bare_response<B: From<Bytes>>(self) -> Response<B> {
        let mut resp = Response::new(B::from(Bytes::from(self.body_json())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(GATEWAY_ERROR_HEADER, HeaderValue::from_static("gateway"));
        if let Some(scope) = self
            .upstream_scope
            .and_then(|s| HeaderValue::from_str(&s).ok())
        {
            h.insert(RATELIMITED_HEADER, HeaderValue::from_static("gateway"));
            h.insert(UPSTREAM_SCOPE_HEADER, scope);
        }
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.label(), self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_is_anthropic_shaped() {
        let e = Error::new(ErrorKind::RequestTooLarge, "too big");
        let v: serde_json::Value = serde_json::from_str(&e.body_json()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "request_too_large");
        assert_eq!(v["error"]["message"], "too big");
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn sse_error_event_is_one_complete_event() {
        let ev = Error::new(ErrorKind::UpstreamProtocol, "upstream failed").sse_event();
        let s = std::str::from_utf8(&ev).unwrap();
        assert!(s.starts_with("event: error\ndata: {"));
        assert!(s.ends_with("\n\n"));
        assert_eq!(s.matches("\n\n").count(), 1);
    }
}
