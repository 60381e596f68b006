//! Request targets as a hostile client sends them (`curl --path-as-is`): dot segments,
//! empty segments and encoded slashes are refused before routing and never reach the
//! upstream, in managed and passthrough mode alike; only the API's routes with their
//! methods are forwarded, unknown ones only when `upstream.pass_unknown_routes` is on.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one request exactly as written (no client-side path clean-up) and returns
/// the status and the body of the answer.
async fn raw(h: &Harness, method: &str, target: &str, key: &str) -> (u16, String) {
    let addr = h.url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.expect("node listens");
    let body = if method == "POST" {
        r#"{"model":"claude-x","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#
    } else {
        ""
    };
    let req = format!(
        "{method} {target} HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\nanthropic-version: 2023-06-01\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer in time")
        .expect("the answer is read");
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The probe's paths x methods: (method, target, status, Anthropic error type).
const REFUSED: &[(&str, &str, u16, &str)] = &[
    ("GET", "/v1/../admin", 400, "invalid_request_error"),
    ("GET", "/v1/%2e%2e/metrics", 400, "invalid_request_error"),
    ("GET", "/v1/..%2fmetrics", 400, "invalid_request_error"),
    ("POST", "/v1/./messages", 400, "invalid_request_error"),
    ("POST", "/v1//messages", 400, "invalid_request_error"),
    ("POST", "/v1/x/../messages", 400, "invalid_request_error"),
    (
        "POST",
        "/v1/messages/../messages?beta=true",
        400,
        "invalid_request_error",
    ),
    ("GET", "/v1/strait/deferred/abc", 404, "not_found_error"),
    ("GET", "/v1/admin", 404, "not_found_error"),
    ("GET", "/v1/messages", 405, "invalid_request_error"),
    ("TRACE", "/v1/messages", 405, "invalid_request_error"),
    ("BREW", "/v1/models", 405, "invalid_request_error"),
];

async fn refused_paths_never_reach_the_upstream(h: &Harness, key: &str) {
    for (method, target, status, kind) in REFUSED {
        let (got, body) = raw(h, method, target, key).await;
        assert_eq!(got, *status, "{method} {target}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("an error object");
        assert_eq!(v["error"]["type"], *kind, "{method} {target}: {body}");
    }
    assert!(
        h.mock.requests().is_empty(),
        "refused requests reached the upstream: {:?}",
        h.mock.requests()
    );
    // The real routes still go through, query strings included.
    let (got, body) = raw(h, "POST", "/v1/messages?beta=true", key).await;
    assert_eq!(got, 200, "{body}");
    let (got, body) = raw(h, "GET", "/v1/models", key).await;
    assert_eq!(got, 200, "{body}");
    let paths: Vec<String> = h.mock.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/v1/messages?beta=true", "/v1/models"]);
}

#[tokio::test]
async fn managed_mode_refuses_path_tricks_before_routing() {
    let h = Harness::managed().await;
    refused_paths_never_reach_the_upstream(&h, CLIENT_KEY).await;
}

#[tokio::test]
async fn passthrough_mode_refuses_path_tricks_before_routing() {
    let h = Harness::passthrough().await;
    refused_paths_never_reach_the_upstream(&h, "sk-ant-client-own-key").await;
}

#[tokio::test]
async fn unknown_routes_are_relayed_only_when_switched_on() {
    let off = Harness::managed().await;
    let (got, body) = raw(&off, "POST", "/v1/newer/api", CLIENT_KEY).await;
    assert_eq!(got, 404, "{body}");
    assert!(off.mock.requests().is_empty());

    let on = Harness::managed_with(|c| c.upstream.pass_unknown_routes = true).await;
    let (_, _) = raw(&on, "POST", "/v1/newer/api", CLIENT_KEY).await;
    let (got, body) = raw(&on, "POST", "/v1/newer/../api", CLIENT_KEY).await;
    assert_eq!(got, 400, "hygiene holds with the switch on: {body}");
    let paths: Vec<String> = on.mock.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        ["/v1/newer/api"],
        "only the clean unknown path is relayed"
    );
}
