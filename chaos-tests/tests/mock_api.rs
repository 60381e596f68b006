//! End-to-end tests of the mock Anthropic API, the fault proxy and the mock binary, over real sockets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use strait_chaos::faultproxy::{FaultProxy, Spikes};
use strait_chaos::mock::{Fault, MockConfig, MockEndpoint, MockHandle, MockLimit, MockUpstream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

type Body = BoxBody<Bytes, Infallible>;
type HttpClient = Client<HttpConnector, Body>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn mock() -> MockHandle {
    MockUpstream::start(MockConfig::default()).await.unwrap()
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

/// A request with a valid key and version; `extra` headers are added or override.
fn request(
    base: &str,
    method: Method,
    path: &str,
    body: Body,
    extra: &[(&str, &str)],
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    let mut headers = vec![
        ("x-api-key", "sk-test"),
        ("anthropic-version", "2023-06-01"),
        ("content-type", "application/json"),
    ];
    for (k, v) in extra {
        headers.retain(|(h, _)| h != k);
        headers.push((k, v));
    }
    for (k, v) in headers {
        if !v.is_empty() {
            b = b.header(k, v);
        }
    }
    b.body(body).unwrap()
}

fn message_body(text: &str, max_tokens: u64, stream: bool) -> Body {
    full(
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": max_tokens,
            "stream": stream,
            "messages": [{"role": "user", "content": text}],
        })
        .to_string(),
    )
}

async fn send(client: &HttpClient, req: Request<Body>) -> Response<Incoming> {
    timeout(Duration::from_secs(5), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed")
}

async fn read_json(resp: Response<Incoming>) -> (StatusCode, HeaderMap, Value) {
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (parts.status, parts.headers, value)
}

async fn call(
    mock: &MockHandle,
    method: Method,
    path: &str,
    body: Body,
    extra: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Value) {
    read_json(send(&client(), request(mock.url(), method, path, body, extra)).await).await
}

async fn post_message(mock: &MockHandle, extra: &[(&str, &str)]) -> (StatusCode, HeaderMap, Value) {
    call(
        mock,
        Method::POST,
        "/v1/messages",
        message_body("hello there", 100, false),
        extra,
    )
    .await
}

fn assert_error(status: StatusCode, headers: &HeaderMap, body: &Value, code: u16, kind: &str) {
    assert_eq!(status.as_u16(), code, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers["request-id"].to_str().unwrap().starts_with("req_"));
}

/// SSE frames with their arrival time since `start`.
async fn frames(resp: Response<Incoming>, start: Instant) -> Vec<(Duration, Bytes)> {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("stream stalled")
    {
        if let Ok(data) = frame.unwrap().into_data() {
            out.push((start.elapsed(), data));
        }
    }
    out
}

/// (event name, data JSON) pairs of an SSE text.
fn parse_sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap()
                .to_owned();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            (name, serde_json::from_str(data).unwrap())
        })
        .collect()
}

fn event_names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test]
async fn non_streaming_reply_has_anthropic_shape_and_predictable_usage() {
    let mock = mock().await;
    // 44 characters of prompt text -> 11 input tokens.
    let text = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH";
    let (status, headers, body) = call(
        &mock,
        Method::POST,
        "/v1/messages",
        message_body(text, 100, false),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["request-id"].to_str().unwrap().starts_with("req_"));
    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-sonnet-4-5");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10 tok11"}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    assert_eq!(
        body["usage"],
        json!({
            "input_tokens": 11,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 12,
            "service_tier": "standard"
        })
    );

    let (_, _, capped) = call(
        &mock,
        Method::POST,
        "/v1/messages",
        message_body("hi", 3, false),
        &[],
    )
    .await;
    assert_eq!(capped["content"][0]["text"], "tok0 tok1 tok2");
    assert_eq!(capped["stop_reason"], "max_tokens");
    assert_eq!(capped["usage"]["output_tokens"], 3);
    assert_eq!(
        capped["usage"]["input_tokens"], 1,
        "short prompts still cost one token"
    );

    let recorded = mock.requests();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].method, Method::POST);
    assert_eq!(recorded[0].path, "/v1/messages");
    assert_eq!(recorded[0].header("x-api-key"), Some("sk-test"));
    assert_eq!(recorded[0].json().unwrap()["messages"][0]["content"], text);
    mock.clear_requests();
    assert!(mock.requests().is_empty());
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn invalid_requests_get_invalid_request_errors() {
    let mock = mock().await;
    let (s, h, b) = call(&mock, Method::POST, "/v1/messages", full("{not json"), &[]).await;
    assert_error(s, &h, &b, 400, "invalid_request_error");
    let missing = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}).to_string();
    let (s, h, b) = call(&mock, Method::POST, "/v1/messages", full(missing), &[]).await;
    assert_error(s, &h, &b, 400, "invalid_request_error");
    assert_eq!(b["error"]["message"], "max_tokens: Field required");
    let (s, h, b) = call(&mock, Method::GET, "/v1/nope", full(""), &[]).await;
    assert_error(s, &h, &b, 404, "not_found_error");
}

#[tokio::test]
async fn authentication_and_version_are_checked() {
    let mock = mock().await;
    let (s, h, b) = post_message(&mock, &[("x-api-key", "")]).await;
    assert_error(s, &h, &b, 401, "authentication_error");
    assert_eq!(
        b,
        json!({"type": "error", "error": {"type": "authentication_error", "message": "x-api-key header is required"}})
    );

    mock.set_valid_keys(Some(vec!["sk-good".into()]));
    let (s, h, b) = post_message(&mock, &[("x-api-key", "sk-other")]).await;
    assert_error(s, &h, &b, 401, "authentication_error");
    assert_eq!(b["error"]["message"], "invalid x-api-key");
    let (s, _, _) = post_message(
        &mock,
        &[("x-api-key", ""), ("authorization", "Bearer sk-good")],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "a bearer token is accepted as the key");

    mock.set_valid_keys(None);
    let (s, h, b) = post_message(&mock, &[("anthropic-version", "")]).await;
    assert_error(s, &h, &b, 400, "invalid_request_error");
}

#[tokio::test]
async fn success_responses_carry_rate_limit_headers() {
    let mock = mock().await;
    let (_, first, _) = post_message(&mock, &[]).await;
    let (_, second, _) = post_message(&mock, &[]).await;
    for kind in ["requests", "input-tokens", "output-tokens", "tokens"] {
        for part in ["limit", "remaining", "reset"] {
            let name = format!("anthropic-ratelimit-{kind}-{part}");
            assert!(second.contains_key(name.as_str()), "missing {name}");
        }
    }
    assert_eq!(num(&second, "anthropic-ratelimit-requests-limit"), 4000);
    let reset = second["anthropic-ratelimit-requests-reset"]
        .to_str()
        .unwrap();
    assert!(
        reset.ends_with('Z') && reset.contains('T'),
        "RFC 3339: {reset}"
    );
    // Unless a minute boundary fell between the two requests, usage was counted.
    if first["anthropic-ratelimit-requests-reset"] == second["anthropic-ratelimit-requests-reset"] {
        assert_eq!(
            num(&first, "anthropic-ratelimit-requests-remaining") - 1,
            num(&second, "anthropic-ratelimit-requests-remaining")
        );
        assert!(
            num(&second, "anthropic-ratelimit-output-tokens-remaining")
                < num(&first, "anthropic-ratelimit-output-tokens-remaining")
        );
    }
}

#[tokio::test]
async fn stream_has_real_event_order_and_paced_frames() {
    let mock = mock().await;
    let start = Instant::now();
    let resp = send(
        &client(),
        request(
            mock.url(),
            Method::POST,
            "/v1/messages",
            message_body("abcdefgh", 100, true),
            &[("x-mock-pacing", "ttft-ms=150,interval-ms=60,tokens=4")],
        ),
    )
    .await;
    assert_eq!(
        resp.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert!(resp
        .headers()
        .contains_key("anthropic-ratelimit-requests-remaining"));
    let frames = frames(resp, start).await;
    let text: String = frames
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b))
        .collect();
    let events = parse_sse(&text);
    assert_eq!(
        event_names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let msg = &events[0].1["message"];
    assert_eq!(msg["content"], json!([]));
    assert_eq!(msg["usage"]["input_tokens"], 2);
    assert_eq!(msg["usage"]["output_tokens"], 1);
    assert_eq!(
        events[1].1,
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    assert_eq!(
        events[3].1,
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "tok0"}})
    );
    let streamed: String = events[3..7]
        .iter()
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, "tok0 tok1 tok2 tok3");
    assert_eq!(
        events[8].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 4}})
    );

    // Each delta arrives in its own frame, spaced by the interval, after the TTFT.
    assert!(
        frames[0].0 >= Duration::from_millis(150),
        "first frame at {:?}",
        frames[0].0
    );
    let delta_times: Vec<Duration> = frames
        .iter()
        .filter(|(_, b)| b.starts_with(b"event: content_block_delta"))
        .map(|(t, b)| {
            assert_eq!(
                parse_sse(&String::from_utf8_lossy(b)).len(),
                1,
                "one event per frame"
            );
            *t
        })
        .collect();
    assert_eq!(delta_times.len(), 4);
    for pair in delta_times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(20),
            "deltas too close: {delta_times:?}"
        );
    }
    assert!(delta_times[3] >= Duration::from_millis(150 + 3 * 60));
}

#[tokio::test]
async fn h2c_prior_knowledge_works_and_is_recorded() {
    let mock = mock().await;
    let resp = send(
        &h2c_client(),
        request(
            mock.url(),
            Method::POST,
            "/v1/messages",
            message_body("hi", 5, true),
            &[],
        ),
    )
    .await;
    assert_eq!(resp.version(), Version::HTTP_2);
    let text: String = frames(resp, Instant::now())
        .await
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b))
        .collect();
    assert_eq!(parse_sse(&text).last().unwrap().0, "message_stop");
    assert_eq!(mock.requests()[0].version, Version::HTTP_2);
}

#[tokio::test]
async fn tls_serves_h2_to_a_client_trusting_the_ca() {
    let mock = MockUpstream::start(MockConfig {
        tls: true,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    assert!(mock.url().starts_with("https://127.0.0.1:"));
    let tls = strait_chaos::tls::client_config(mock.cert_pem().unwrap(), &[]).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_all_versions()
        .build();
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build(connector);
    let req = request(mock.url(), Method::GET, "/v1/models", full(""), &[]);
    let resp = timeout(Duration::from_secs(5), client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2, "ALPN should pick h2");
    let (status, _, body) = read_json(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn status_faults_return_anthropic_errors_with_retry_after() {
    let mock = mock().await;
    let (s, h, b) = post_message(&mock, &[("x-mock-fault", "status=429;retry-after=2")]).await;
    assert_error(s, &h, &b, 429, "rate_limit_error");
    assert_eq!(h["retry-after"], "2");
    assert_ne!(
        h["anthropic-ratelimit-requests-remaining"], "0",
        "a transient 429 keeps quota"
    );
    let normal_reset = h["anthropic-ratelimit-requests-reset"]
        .to_str()
        .unwrap()
        .to_owned();

    let (s, h, b) = post_message(
        &mock,
        &[("x-mock-fault", "status=429;retry-after=30;exhausted")],
    )
    .await;
    assert_error(s, &h, &b, 429, "rate_limit_error");
    assert_eq!(h["retry-after"], "30");
    assert_eq!(h["anthropic-ratelimit-requests-remaining"], "0");
    // Same RFC 3339 shape, so string order is time order.
    let far = h["anthropic-ratelimit-requests-reset"].to_str().unwrap();
    assert!(
        far > normal_reset.as_str(),
        "{far} should be after {normal_reset}"
    );

    for (code, kind) in [
        (529, "overloaded_error"),
        (500, "api_error"),
        (403, "permission_error"),
        (413, "request_too_large"),
    ] {
        let (s, h, b) = post_message(&mock, &[("x-mock-fault", &format!("status={code}"))]).await;
        assert_error(s, &h, &b, code, kind);
        assert!(h.contains_key("anthropic-ratelimit-requests-limit"));
    }

    let (s, h, b) = post_message(&mock, &[("x-mock-fault", "status=429;retry-afterr=2")]).await;
    assert_error(s, &h, &b, 400, "invalid_request_error");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("retry-afterr"));
}

#[tokio::test]
async fn latency_fault_delays_the_response_headers() {
    let mock = mock().await;
    let start = Instant::now();
    let resp = send(
        &client(),
        request(
            mock.url(),
            Method::POST,
            "/v1/messages",
            message_body("x", 5, false),
            &[("x-mock-fault", "latency-ms=300")],
        ),
    )
    .await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(resp.status(), StatusCode::OK);
}

fn raw_request(fault: &str) -> Vec<u8> {
    let body = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    format!(
        "POST /v1/messages HTTP/1.1\r\nhost: mock\r\nx-api-key: k\r\nanthropic-version: 2023-06-01\r\n\
         x-mock-fault: {fault}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn reset_fault_resets_the_connection_without_a_response() {
    let mock = mock().await;
    let mut sock = TcpStream::connect(mock.addr()).await.unwrap();
    sock.write_all(&raw_request("reset")).await.unwrap();
    let mut got = Vec::new();
    let result = timeout(Duration::from_secs(3), sock.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(
        got.is_empty(),
        "no response bytes expected: {}",
        String::from_utf8_lossy(&got)
    );
    let err = result.expect_err("expected a connection reset, got a clean EOF");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(
        mock.requests().len(),
        1,
        "the request was read and recorded first"
    );
}

async fn open_stream(mock: &MockHandle, fault: &str) -> Incoming {
    let req = request(
        mock.url(),
        Method::POST,
        "/v1/messages",
        message_body("hi", 100, true),
        &[("x-mock-fault", fault)],
    );
    let resp = send(&client(), req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body()
}

/// Reads until `n` complete events have arrived.
async fn read_events(body: &mut Incoming, n: usize) -> Vec<(String, Value)> {
    let mut text = String::new();
    loop {
        let events = parse_sse(text.rsplit_once("\n\n").map_or("", |(done, _)| done));
        if events.len() >= n {
            return events;
        }
        let frame = timeout(Duration::from_secs(3), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&frame.into_data().unwrap()));
    }
}

#[tokio::test]
async fn stall_after_sends_n_events_then_nothing() {
    let mock = mock().await;
    let mut body = open_stream(&mock, "stall-after=3").await;
    let events = read_events(&mut body, 3).await;
    assert_eq!(
        event_names(&events),
        ["message_start", "content_block_start", "ping"]
    );
    assert!(
        timeout(Duration::from_millis(300), body.frame())
            .await
            .is_err(),
        "stream should stall"
    );
}

#[tokio::test]
async fn reset_after_sends_n_events_then_aborts() {
    let mock = mock().await;
    let mut body = open_stream(&mock, "reset-after=4").await;
    let events = read_events(&mut body, 4).await;
    assert_eq!(events.len(), 4);
    assert_eq!(events[3].0, "content_block_delta");
    let next = timeout(Duration::from_secs(3), body.frame())
        .await
        .expect("should abort, not stall");
    assert!(
        matches!(next, Some(Err(_))),
        "expected a body error, got {next:?}"
    );
}

#[tokio::test]
async fn error_after_ends_the_stream_with_an_error_event() {
    let mock = mock().await;
    let body = open_stream(&mock, "error-after=3").await;
    let bytes = timeout(Duration::from_secs(3), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    let events = parse_sse(&String::from_utf8_lossy(&bytes));
    assert_eq!(
        event_names(&events),
        ["message_start", "content_block_start", "ping", "error"]
    );
    assert_eq!(
        events[3].1,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
}

#[tokio::test]
async fn drip_sends_the_stream_in_small_pieces() {
    let mock = mock().await;
    let req = request(
        mock.url(),
        Method::POST,
        "/v1/messages",
        message_body("hi", 100, true),
        &[("x-mock-fault", "drip-ms=2"), ("x-mock-pacing", "tokens=2")],
    );
    let start = Instant::now();
    let frames = frames(send(&client(), req).await, start).await;
    assert!(frames.len() >= 50, "only {} frames", frames.len());
    assert!(frames.iter().all(|(_, b)| b.len() <= 7));
    assert!(frames.last().unwrap().0 >= Duration::from_millis(2 * (frames.len() as u64 - 1)) / 2);
    let text: String = frames
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b))
        .collect();
    assert_eq!(event_names(&parse_sse(&text)).last(), Some(&"message_stop"));
}

#[tokio::test]
async fn key_faults_and_queued_faults_apply_to_the_right_requests() {
    let mock = mock().await;
    mock.set_key_fault("sk-hot", Fault::rate_limited(1));
    let (s, h, _) = post_message(&mock, &[("x-api-key", "sk-hot")]).await;
    assert_eq!((s.as_u16(), h["retry-after"].to_str().unwrap()), (429, "1"));
    assert_eq!(
        post_message(&mock, &[("x-api-key", "sk-cool")]).await.0,
        StatusCode::OK
    );
    mock.clear_key_faults();
    assert_eq!(
        post_message(&mock, &[("x-api-key", "sk-hot")]).await.0,
        StatusCode::OK
    );

    mock.push_fault(Fault::overloaded());
    mock.push_fault(Fault::status(500));
    let statuses = [
        post_message(&mock, &[]).await.0.as_u16(),
        post_message(&mock, &[]).await.0.as_u16(),
        post_message(&mock, &[]).await.0.as_u16(),
    ];
    assert_eq!(statuses, [529, 500, 200]);
}

#[tokio::test]
async fn count_tokens_and_models() {
    let mock = mock().await;
    let body = json!({"model": "claude-opus-4-1", "system": "abcd", "messages": [{"role": "user", "content": [{"type": "text", "text": "abcdefgh"}]}]});
    let (s, _, b) = call(
        &mock,
        Method::POST,
        "/v1/messages/count_tokens",
        full(body.to_string()),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b, json!({"input_tokens": 3}));

    let (s, h, list) = call(&mock, Method::GET, "/v1/models", full(""), &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h.contains_key("anthropic-ratelimit-requests-remaining"));
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"claude-sonnet-4-5")
            && ids.contains(&"claude-opus-4-1")
            && ids.contains(&"claude-haiku-4-5")
    );
    assert_eq!(list["has_more"], false);
    assert_eq!(list["first_id"], ids[0]);
    assert_eq!(list["last_id"], ids[ids.len() - 1]);
    let (s, _, m) = call(
        &mock,
        Method::GET,
        "/v1/models/claude-sonnet-4-5",
        full(""),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(m["type"], "model");
    assert_eq!(m["display_name"], "Claude Sonnet 4.5");
    let (s, h, b) = call(&mock, Method::GET, "/v1/models/claude-nope", full(""), &[]).await;
    assert_error(s, &h, &b, 404, "not_found_error");
}

#[tokio::test]
async fn batches_end_on_first_read_and_return_jsonl_results() {
    let mock = mock().await;
    let params = json!({"model": "claude-haiku-4-5", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]});
    let create = json!({"requests": [{"custom_id": "a", "params": params}, {"custom_id": "b", "params": params}]});
    let (s, _, batch) = call(
        &mock,
        Method::POST,
        "/v1/messages/batches",
        full(create.to_string()),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let id = batch["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("msgbatch_"));
    assert_eq!(batch["type"], "message_batch");
    assert_eq!(batch["processing_status"], "in_progress");
    assert_eq!(batch["request_counts"]["processing"], 2);

    let (_, _, got) = call(
        &mock,
        Method::GET,
        &format!("/v1/messages/batches/{id}"),
        full(""),
        &[],
    )
    .await;
    assert_eq!(got["processing_status"], "ended");
    assert_eq!(got["request_counts"]["succeeded"], 2);
    assert_eq!(
        got["results_url"],
        format!("{}/v1/messages/batches/{id}/results", mock.url())
    );

    let resp = send(
        &client(),
        request(
            mock.url(),
            Method::GET,
            &format!("/v1/messages/batches/{id}/results"),
            full(""),
            &[],
        ),
    )
    .await;
    assert_eq!(resp.headers()["content-type"], "application/x-jsonl");
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["custom_id"], "a");
    assert_eq!(lines[1]["result"]["type"], "succeeded");
    assert_eq!(
        lines[1]["result"]["message"]["content"][0]["text"],
        "tok0 tok1"
    );

    let (_, _, second) = call(
        &mock,
        Method::POST,
        "/v1/messages/batches",
        full(create.to_string()),
        &[],
    )
    .await;
    let id2 = second["id"].as_str().unwrap();
    let (_, _, canceling) = call(
        &mock,
        Method::POST,
        &format!("/v1/messages/batches/{id2}/cancel"),
        full(""),
        &[],
    )
    .await;
    assert_eq!(canceling["processing_status"], "canceling");
    let (_, _, list) = call(&mock, Method::GET, "/v1/messages/batches", full(""), &[]).await;
    assert_eq!(list["data"][0]["id"], id2, "newest first");
    assert_eq!(list["data"][0]["request_counts"]["canceled"], 2);

    let dup = json!({"requests": [{"custom_id": "a", "params": params}, {"custom_id": "a", "params": params}]});
    let (s, h, b) = call(
        &mock,
        Method::POST,
        "/v1/messages/batches",
        full(dup.to_string()),
        &[],
    )
    .await;
    assert_error(s, &h, &b, 400, "invalid_request_error");
}

#[tokio::test]
async fn file_upload_counts_streamed_bytes() {
    let mock = mock().await;
    // 3 MiB sent chunked, so the mock cannot learn the size from content-length.
    let chunks =
        (0..48).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![7u8; 64 * 1024]))));
    let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
    let (s, _, file) = call(
        &mock,
        Method::POST,
        "/v1/files",
        body,
        &[("content-type", "application/pdf")],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(file["id"].as_str().unwrap().starts_with("file_"));
    assert_eq!(file["type"], "file");
    assert_eq!(file["size_bytes"], 3 * 1024 * 1024);
    assert_eq!(file["mime_type"], "application/pdf");
    assert_eq!(mock.requests()[0].body_len, 3 * 1024 * 1024);

    let (_, _, list) = call(&mock, Method::GET, "/v1/files", full(""), &[]).await;
    assert_eq!(list["data"][0]["id"], file["id"]);
}

/// `POST /v1/messages` for `model` with key `key`.
async fn post_model(mock: &MockHandle, key: &str, model: &str) -> (StatusCode, HeaderMap, Value) {
    let body =
        json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    call(
        mock,
        Method::POST,
        "/v1/messages",
        full(body.to_string()),
        &[("x-api-key", key)],
    )
    .await
}

/// The status of [`post_model`].
async fn status_of(mock: &MockHandle, key: &str, model: &str) -> u16 {
    post_model(mock, key, model).await.0.as_u16()
}

fn per_minute(requests: u64) -> MockLimit {
    MockLimit {
        requests,
        per: Duration::from_secs(60),
    }
}

fn num(h: &HeaderMap, name: &str) -> u64 {
    h[name].to_str().unwrap().parse().unwrap()
}

/// RFC 3339 of now + `secs` as the mock writes it; equal-width UTC strings compare in time order.
fn rfc3339_in(secs: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    t.replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test]
async fn keys_of_one_org_share_a_bucket_and_other_orgs_have_their_own() {
    let mock = mock().await;
    mock.set_key_org("sk-acme-1", "acme");
    mock.set_key_org("sk-acme-2", "acme");
    mock.set_key_org("sk-globex", "globex");
    mock.set_limit(MockEndpoint::Messages, None, per_minute(2));
    let sonnet = "claude-sonnet-4-5";
    let statuses = [
        status_of(&mock, "sk-acme-1", sonnet).await,
        status_of(&mock, "sk-acme-2", sonnet).await,
        status_of(&mock, "sk-acme-1", sonnet).await,
        status_of(&mock, "sk-acme-2", sonnet).await,
    ];
    assert_eq!(
        statuses,
        [200, 200, 429, 429],
        "acme's two keys share 2 requests"
    );
    for key in ["sk-globex", "sk-lone", "sk-globex", "sk-lone"] {
        assert_eq!(
            post_model(&mock, key, sonnet).await.0,
            StatusCode::OK,
            "{key} has its own org's bucket"
        );
    }
    assert_eq!(status_of(&mock, "sk-lone", sonnet).await, 429);
    assert_eq!(mock.rate_limited_count(), 3);
}

#[tokio::test]
async fn a_class_limit_leaves_other_classes_and_endpoints_alone() {
    let mock = mock().await;
    mock.set_limit(MockEndpoint::Messages, Some("sonnet"), per_minute(1));
    assert_eq!(post_model(&mock, "sk-a", "claude-sonnet-4-5").await.0, 200);
    let (s, h, b) = post_model(&mock, "sk-a", "claude-3-7-sonnet-latest").await;
    assert_error(s, &h, &b, 429, "rate_limit_error");
    for _ in 0..3 {
        assert_eq!(post_model(&mock, "sk-a", "claude-haiku-4-5").await.0, 200);
    }
    let count =
        json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..3 {
        let (s, _, _) = call(
            &mock,
            Method::POST,
            "/v1/messages/count_tokens",
            full(count.to_string()),
            &[("x-api-key", "sk-a")],
        )
        .await;
        assert_eq!(s, StatusCode::OK, "count_tokens is not a Messages request");
        let (s, _, _) = call(
            &mock,
            Method::GET,
            "/v1/models",
            full(""),
            &[("x-api-key", "sk-a")],
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }

    // The endpoint-wide limit applies to each class on its own; the class limit still wins.
    mock.set_limit(MockEndpoint::Messages, None, per_minute(2));
    let mut opus = Vec::new();
    let mut haiku = Vec::new();
    for _ in 0..3 {
        opus.push(status_of(&mock, "sk-a", "claude-opus-4-1").await);
        haiku.push(status_of(&mock, "sk-a", "claude-haiku-4-5").await);
    }
    assert_eq!((opus, haiku), (vec![200, 200, 429], vec![200, 200, 429]));
    assert_eq!(post_model(&mock, "sk-a", "claude-sonnet-4-5").await.0, 200);
    assert_eq!(post_model(&mock, "sk-a", "claude-sonnet-4-5").await.0, 429);

    // count_tokens has one limit of its own whatever the class given.
    mock.set_limit(MockEndpoint::CountTokens, Some("haiku"), per_minute(1));
    let mut counted = Vec::new();
    for model in ["claude-sonnet-4-5", "claude-opus-4-1"] {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        let (s, h, b) = call(
            &mock,
            Method::POST,
            "/v1/messages/count_tokens",
            full(body.to_string()),
            &[("x-api-key", "sk-a")],
        )
        .await;
        counted.push(s.as_u16());
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert_error(s, &h, &b, 429, "rate_limit_error");
            assert!(
                b["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("count_tokens"),
                "{b}"
            );
        }
    }
    assert_eq!(counted, [200, 429]);
}

#[tokio::test]
async fn a_limited_request_says_when_to_retry() {
    let mock = mock().await;
    mock.set_limit(MockEndpoint::Messages, Some("sonnet"), per_minute(3));
    let model = "claude-sonnet-4-5";
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let (s, h, _) = post_model(&mock, "sk-a", model).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(num(&h, "anthropic-ratelimit-requests-limit"), 3);
        remaining.push(num(&h, "anthropic-ratelimit-requests-remaining"));
    }
    assert_eq!(remaining, [2, 1, 0], "success headers describe the bucket");

    let (earliest, latest) = (rfc3339_in(40), rfc3339_in(62));
    let (s, h, b) = post_model(&mock, "sk-a", model).await;
    assert_error(s, &h, &b, 429, "rate_limit_error");
    let message = b["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "This request would exceed your organization's rate limit of 3 requests per minute for sonnet"
        ),
        "{message}"
    );
    // One token comes back every 20 s.
    let retry_after = num(&h, "retry-after");
    assert!(
        (15..=20).contains(&retry_after),
        "retry-after {retry_after}"
    );
    assert_eq!(h["x-should-retry"], "true");
    assert_eq!(num(&h, "anthropic-ratelimit-requests-limit"), 3);
    assert_eq!(num(&h, "anthropic-ratelimit-requests-remaining"), 0);
    let reset = h["anthropic-ratelimit-requests-reset"].to_str().unwrap();
    assert!(
        earliest.as_str() <= reset && reset <= latest.as_str(),
        "the bucket is full again in about 60 s: {reset} not in {earliest}..{latest}"
    );
    assert!(h.contains_key("anthropic-ratelimit-input-tokens-limit"));
    assert_eq!(mock.rate_limited_count(), 1);
}

#[tokio::test]
async fn an_empty_bucket_refills_after_per() {
    let mock = mock().await;
    let per = Duration::from_secs(2);
    mock.set_limit(MockEndpoint::Models, None, MockLimit { requests: 1, per });
    let models = || call(&mock, Method::GET, "/v1/models", full(""), &[]);
    let start = Instant::now();
    assert_eq!(models().await.0, StatusCode::OK);
    let (s, h, _) = models().await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!((1..=2).contains(&num(&h, "retry-after")), "{h:?}");
    let refilled = loop {
        let (s, _, _) = models().await;
        if s == StatusCode::OK {
            break start.elapsed();
        }
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
        assert!(start.elapsed() < Duration::from_secs(20), "never refilled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        refilled >= per - Duration::from_millis(50),
        "refilled after {refilled:?}"
    );
}

#[tokio::test]
async fn refused_keys_and_organisations_get_anthropic_errors_until_turned_off() {
    let mock = mock().await;
    mock.revoke_key("sk-revoked");
    let (s, h, b) = post_model(&mock, "sk-revoked", "claude-haiku-4-5").await;
    assert_error(s, &h, &b, 401, "authentication_error");
    assert_eq!(b["error"]["message"], "invalid x-api-key");
    mock.forbid_key("sk-elsewhere");
    let (s, h, b) = post_model(&mock, "sk-elsewhere", "claude-haiku-4-5").await;
    assert_error(s, &h, &b, 403, "permission_error");

    mock.set_key_org("sk-b1", "broke");
    mock.set_key_org("sk-b2", "broke");
    mock.set_org_billing_error("broke", true);
    for key in ["sk-b1", "sk-b2"] {
        let (s, h, b) = post_model(&mock, key, "claude-haiku-4-5").await;
        assert_error(s, &h, &b, 402, "billing_error");
    }
    assert_eq!(
        post_model(&mock, "sk-fine", "claude-haiku-4-5").await.0,
        200
    );
    // Billing comes before the spend limit; the spend limit is a 400 naming the date.
    mock.set_org_spend_limit("broke", true);
    assert_eq!(status_of(&mock, "sk-b1", "claude-haiku-4-5").await, 402);
    mock.set_org_billing_error("broke", false);
    let (s, h, b) = post_model(&mock, "sk-b2", "claude-haiku-4-5").await;
    assert_error(s, &h, &b, 400, "invalid_request_error");
    let message = b["error"]["message"].as_str().unwrap();
    let date = message
        .strip_prefix(
            "You have reached your specified API usage limits. You will regain access on ",
        )
        .and_then(|m| m.strip_suffix(" at 00:00 UTC."))
        .unwrap_or_else(|| panic!("{message}"));
    assert!(
        date.len() == 10 && date.ends_with("-01") && date > rfc3339_in(0).as_str(),
        "the first of next month: {date}"
    );
    mock.set_org_spend_limit("broke", false);
    assert_eq!(post_model(&mock, "sk-b1", "claude-haiku-4-5").await.0, 200);

    // A revoked key stays refused even in a refused org; a lone key is its own org.
    mock.set_key_org("sk-revoked", "broke");
    mock.set_org_billing_error("broke", true);
    assert_eq!(
        status_of(&mock, "sk-revoked", "claude-haiku-4-5").await,
        401
    );
    mock.set_org_billing_error("sk-lone", true);
    assert_eq!(status_of(&mock, "sk-lone", "claude-haiku-4-5").await, 402);
    assert_eq!(mock.rate_limited_count(), 0);
}

#[tokio::test]
async fn account_refusals_come_before_faults_and_limits_after_them() {
    let mock = mock().await;
    mock.set_limit(MockEndpoint::Messages, None, per_minute(1));
    mock.set_org_billing_error("sk-a", true);
    mock.push_fault(Fault::overloaded());
    assert_eq!(status_of(&mock, "sk-a", "claude-haiku-4-5").await, 402);
    mock.set_org_billing_error("sk-a", false);
    let statuses = [
        status_of(&mock, "sk-a", "claude-haiku-4-5").await,
        status_of(&mock, "sk-a", "claude-haiku-4-5").await,
        status_of(&mock, "sk-a", "claude-haiku-4-5").await,
    ];
    assert_eq!(
        statuses,
        [529, 200, 429],
        "the queued fault outlived the 402 and took no token"
    );
    assert_eq!(mock.rate_limited_count(), 1);
    mock.set_key_fault("sk-a", Fault::rate_limited(3));
    let (s, h, _) = post_model(&mock, "sk-a", "claude-haiku-4-5").await;
    assert_eq!((s.as_u16(), num(&h, "retry-after")), (429, 3));
    assert_eq!(mock.rate_limited_count(), 1, "fault 429s are not counted");
}

#[tokio::test]
async fn without_accounts_configured_or_after_clearing_limits_nothing_is_refused() {
    let mock = mock().await;
    for _ in 0..20 {
        let (s, h, _) = post_model(&mock, "sk-a", "claude-sonnet-4-5").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(num(&h, "anthropic-ratelimit-requests-limit"), 4000);
        assert!(!h.contains_key("x-should-retry"));
    }
    mock.set_key_org("sk-a", "acme");
    mock.set_limit(MockEndpoint::Messages, None, per_minute(1));
    assert_eq!(post_model(&mock, "sk-a", "claude-sonnet-4-5").await.0, 200);
    assert_eq!(post_model(&mock, "sk-a", "claude-sonnet-4-5").await.0, 429);
    mock.clear_limits();
    for _ in 0..5 {
        let (s, h, _) = post_model(&mock, "sk-a", "claude-sonnet-4-5").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(num(&h, "anthropic-ratelimit-requests-limit"), 4000);
    }
    assert_eq!(mock.rate_limited_count(), 1);
}

async fn proxied_message(addr: SocketAddr) -> StatusCode {
    let req = request(
        &format!("http://{addr}"),
        Method::POST,
        "/v1/messages",
        message_body("hi", 5, false),
        &[],
    );
    let resp = client().request(req).await.unwrap();
    resp.status()
}

#[tokio::test]
async fn fault_proxy_adds_latency_both_ways() {
    let mock = mock().await;
    let proxy = FaultProxy::start(mock.addr()).await.unwrap();
    assert_eq!(proxied_message(proxy.addr()).await, StatusCode::OK);

    proxy.set_latency(Duration::from_millis(100));
    assert_eq!(proxy.latency(), Duration::from_millis(100));
    let start = Instant::now();
    assert_eq!(proxied_message(proxy.addr()).await, StatusCode::OK);
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "one request and one response leg: {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn fault_proxy_jitter_and_spikes_vary_the_delay_within_their_bounds() {
    let mock = mock().await;
    let proxy = FaultProxy::start(mock.addr()).await.unwrap();
    proxy.set_latency(Duration::from_millis(10));
    proxy.set_jitter(Duration::from_millis(5));
    let draws: Vec<Duration> = (0..200).map(|_| proxy.latency()).collect();
    assert!(draws
        .iter()
        .all(|d| (Duration::from_millis(10)..=Duration::from_millis(15)).contains(d)));
    assert!(
        draws.iter().any(|d| *d != draws[0]),
        "jitter should vary the delay"
    );

    proxy.set_jitter(Duration::ZERO);
    proxy.set_spikes(Some(Spikes {
        every: Duration::from_millis(20),
        length: Duration::from_millis(30),
        extra_min: Duration::from_millis(200),
        extra_max: Duration::from_millis(300),
    }));
    let mut spiked = false;
    for _ in 0..200 {
        let d = proxy.latency();
        assert!(
            d == Duration::from_millis(10)
                || (Duration::from_millis(210)..=Duration::from_millis(310)).contains(&d),
            "a delay outside base or base+spike: {d:?}"
        );
        spiked |= d > Duration::from_millis(10);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(spiked, "no spike within a second at one per 20 ms");
    proxy.set_spikes(None);
    assert_eq!(proxy.latency(), Duration::from_millis(10));
    assert_eq!(proxied_message(proxy.addr()).await, StatusCode::OK);
}

#[tokio::test]
async fn fault_proxy_reset_all_aborts_open_streams() {
    let mock = mock().await;
    let proxy = FaultProxy::start(mock.addr()).await.unwrap();
    let req = request(
        &format!("http://{}", proxy.addr()),
        Method::POST,
        "/v1/messages",
        message_body("hi", 100, true),
        &[("x-mock-fault", "stall-after=3")],
    );
    let mut body = send(&client(), req).await.into_body();
    read_events(&mut body, 3).await;
    assert_eq!(proxy.connections(), 1);
    proxy.reset_all();
    let next = timeout(Duration::from_secs(2), body.frame())
        .await
        .expect("reset should end the stall");
    assert!(
        matches!(next, Some(Err(_))),
        "expected an error, got {next:?}"
    );
    for _ in 0..100 {
        if proxy.connections() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(proxy.connections(), 0);
}

#[tokio::test]
async fn fault_proxy_refuses_and_blackholes() {
    let mock = mock().await;
    let proxy = FaultProxy::start(mock.addr()).await.unwrap();

    proxy.set_refuse(true);
    let mut refused = false;
    for _ in 0..100 {
        match TcpStream::connect(proxy.addr()).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    assert!(refused, "connections should be refused");
    proxy.set_refuse(false);
    let mut ok = false;
    for _ in 0..100 {
        if TcpStream::connect(proxy.addr()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok, "the proxy should listen again");

    proxy.set_blackhole(true);
    let addr = proxy.addr();
    let pending = tokio::spawn(proxied_message(addr));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "nothing may pass a blackhole");
    proxy.set_blackhole(false);
    let status = timeout(Duration::from_secs(3), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "held data flows once the blackhole lifts"
    );
}

#[tokio::test]
async fn binary_prints_its_address_and_serves() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_strait-mock-upstream"))
        .args(["--tokens", "3", "--no-record"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    timeout(
        Duration::from_secs(10),
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .unwrap()
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect(&line)
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"));
    let resp = send(
        &client(),
        request(
            &url,
            Method::POST,
            "/v1/messages",
            message_body("hi", 100, false),
            &[],
        ),
    )
    .await;
    let (_, _, body) = read_json(resp).await;
    assert_eq!(body["content"][0]["text"], "tok0 tok1 tok2");
    child.kill().await.unwrap();
}
