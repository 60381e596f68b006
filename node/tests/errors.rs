//! Bad input and upstream failure: every gateway-made error is Anthropic-shaped,
//! says the gateway made it, echoes nothing secret, and leaves the node serving.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use strait_chaos::mock::MockConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn missing_or_unknown_client_key_is_401() {
    let h = Harness::managed().await;
    let url = format!("{}/v1/messages", h.url);
    let r = post_json(
        &url,
        &[("anthropic-version", "2023-06-01")],
        &message_body(false),
    )
    .await;
    r.assert_gateway_error(401, "authentication_error");
    let r = post_json(&url, &auth("strait-guess-me"), &message_body(false)).await;
    r.assert_gateway_error(401, "authentication_error");
    assert!(
        !r.text().contains("strait-guess-me"),
        "presented key not echoed"
    );
    // An upstream key is not a client key.
    let r = post_json(&url, &auth(UPSTREAM_KEYS[0]), &message_body(false)).await;
    r.assert_gateway_error(401, "authentication_error");
    assert!(h.mock.requests().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn unparseable_json_is_400_and_not_forwarded() {
    let h = Harness::managed().await;
    let mut headers = auth(CLIENT_KEY).to_vec();
    headers.push(("content-type", "application/json"));
    for body in ["{\"model\": \"claude\", ", "not json at all", "[1,2,3]", ""] {
        let r = send(
            Method::POST,
            &format!("{}/v1/messages", h.url),
            &headers,
            body,
        )
        .await;
        r.assert_gateway_error(400, "invalid_request_error");
        if !body.is_empty() {
            assert!(!r.text().contains(body), "body not echoed");
        }
    }
    assert!(h.mock.requests().is_empty());
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let h = Harness::managed_with(|raw| raw.limits.max_body_bytes = 64 * 1024).await;
    let big = format!(
        "{{\"model\":\"claude\",\"pad\":\"{}\"}}",
        "a".repeat(100 * 1024)
    );
    let mut headers = auth(CLIENT_KEY).to_vec();
    headers.push(("content-type", "application/json"));
    // Declared length over the limit.
    let r = send(
        Method::POST,
        &format!("{}/v1/messages", h.url),
        &headers,
        big.clone(),
    )
    .await;
    r.assert_gateway_error(413, "request_too_large");
    // No declared length (chunked): caught while reading.
    let r = chunked_post(&h.url, "/v1/messages", big.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 413"), "{}", &r[..r.len().min(300)]);
    assert!(r.contains("request_too_large"));
    // A streamed upload over the limit.
    let r = chunked_post(&h.url, "/v1/files", &vec![b'z'; 200 * 1024]).await;
    assert!(r.starts_with("HTTP/1.1 413"), "{}", &r[..r.len().min(300)]);
    assert!(h.mock.requests().iter().all(|r| r.path != "/v1/messages"));
    // Still serving.
    let r = h.message(false, &[]).await;
    assert_eq!(r.status, 200);
}

/// Sends a chunked POST by hand (the test client always sets content-length).
async fn chunked_post(base: &str, path: &str, body: &[u8]) -> String {
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nx-api-key: {CLIENT_KEY}\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(16 * 1024) {
        if s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .await
            .is_err()
        {
            break;
        }
        let _ = s.write_all(piece).await;
        let _ = s.write_all(b"\r\n").await;
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let h = Harness::managed().await;
    let r = get(&format!("{}/admin/secrets", h.url), &auth(CLIENT_KEY)).await;
    r.assert_gateway_error(404, "not_found_error");
}

#[tokio::test]
async fn upstream_unreachable_is_502_and_readiness_fails_after_repeated_failures() {
    let closed = closed_port();
    let h = Harness::build(
        MockConfig::default(),
        |raw| {
            raw.upstream.base_url = format!("http://{closed}");
            raw.upstream.connect_timeout = Duration::from_millis(500);
        },
        &UPSTREAM_KEYS,
        &[CLIENT_KEY],
    )
    .await;
    for _ in 0..2 {
        let r = h.message(false, &[]).await;
        r.assert_gateway_error(502, "api_error");
        assert!(!r.text().contains(UPSTREAM_KEYS[0]) && !r.text().contains(UPSTREAM_KEYS[1]));
    }
    // 2 requests x 3 attempts = 6 consecutive failures: over the threshold of 5.
    let r = get(&format!("{}/readyz", h.admin), &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["status"], "fail");
    let m = h.metrics().await;
    assert!(
        m.contains(r#"strait_upstream_errors_total{kind="connect"} 6"#),
        "{m}"
    );
}

#[tokio::test]
async fn upstream_too_slow_is_504() {
    let h =
        Harness::managed_with(|raw| raw.upstream.read_timeout = Duration::from_millis(300)).await;
    let r = h
        .message(false, &[("x-mock-fault", "latency-ms=2000")])
        .await;
    r.assert_gateway_error(504, "api_error");
    assert_eq!(
        h.mock.requests().len(),
        1,
        "a timeout is not retried (the upstream may be working on it)"
    );
}

/// The upstream deadline is timed by the pooled connection's own timer, moved on only
/// when it fires early: a timer left from an earlier request on the connection must
/// neither cut a later request short nor let one run past its own deadline.
#[tokio::test]
async fn upstream_deadline_holds_on_a_reused_connection() {
    let h =
        Harness::managed_with(|raw| raw.upstream.read_timeout = Duration::from_millis(400)).await;
    let r = h.message(false, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The first request's deadline passes while this one waits for its answer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let r = h
        .message(false, &[("x-mock-fault", "latency-ms=300")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(started.elapsed() >= Duration::from_millis(300));
    // And this one is cut at its own deadline, not its predecessors'.
    let started = std::time::Instant::now();
    h.message(false, &[("x-mock-fault", "latency-ms=3000")])
        .await
        .assert_gateway_error(504, "api_error");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_millis(2500),
        "cut after {took:?}, the deadline is 400 ms"
    );
    assert_eq!(
        h.mock.connections_accepted(),
        1,
        "the three requests went over one pooled upstream connection"
    );
}

#[tokio::test]
async fn upstream_reset_before_response_is_retried_then_502() {
    let h = Harness::managed().await;
    for _ in 0..3 {
        h.mock.push_fault("reset".parse().unwrap());
    }
    let r = h.message(false, &[]).await;
    r.assert_gateway_error(502, "api_error");
    assert_eq!(h.mock.requests().len(), 3, "max_attempts = 3");
    // One reset, then success.
    h.mock.push_fault("reset".parse().unwrap());
    let r = h.message(false, &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn oversized_headers_are_refused_and_slow_headers_cut() {
    let h =
        Harness::managed_with(|raw| raw.limits.header_read_timeout = Duration::from_millis(500))
            .await;
    let addr = h.url.trim_start_matches("http://").to_string();

    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let huge = "a".repeat(200 * 1024);
    let _ = s
        .write_all(
            format!("GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: {huge}\r\n\r\n").as_bytes(),
        )
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");

    // Slowloris: half a request line and then nothing; the node hangs up.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /v1/mod").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("node closes the connection");
    assert!(started.elapsed() < Duration::from_secs(3));
    let _ = n;
    let r = get(&format!("{}/livez", h.url), &[]).await;
    assert_eq!(r.status, 200, "still serving");
}

#[tokio::test]
async fn upstream_error_statuses_pass_through_unchanged() {
    let h = Harness::managed_with(|raw| raw.upstream.max_attempts = 1).await;
    for (fault, status, kind) in [
        ("status=400", 400, "invalid_request_error"),
        ("status=500", 500, "api_error"),
        ("status=529", 529, "overloaded_error"),
    ] {
        let r = h.message(false, &[("x-mock-fault", fault)]).await;
        assert_eq!(r.status.as_u16(), status);
        assert_eq!(r.json()["error"]["type"], kind);
        assert!(r.header("x-strait-error-source").is_none(), "upstream-made");
        assert!(r.header("request-id").is_some());
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let h =
        Harness::managed_with(|raw| raw.limits.header_read_timeout = Duration::from_millis(400))
            .await;
    let mut s = livez_connection(&h).await;
    // An idle keep-alive connection holds a connection slot; it must not do so forever.
    assert!(time_to_close(&mut s).await < Duration::from_secs(3));
}

/// A connection to the node on which `GET /livez` was answered 200.
async fn livez_connection(h: &Harness) -> tokio::net::TcpStream {
    let addr = h.url.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    livez(&mut s).await;
    s
}

async fn livez(s: &mut tokio::net::TcpStream) {
    s.write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// How long until the node closes `s` (EOF, within 5 s).
async fn time_to_close(s: &mut tokio::net::TcpStream) -> Duration {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed by the node")
        .unwrap();
    assert_eq!(n, 0, "EOF");
    started.elapsed()
}

/// The idle deadline runs from the last response, not the first: the connection's
/// timer, left at the first request's deadline, is moved on when it fires early.
#[tokio::test]
async fn a_keep_alive_connection_idles_from_its_last_response() {
    let h =
        Harness::managed_with(|raw| raw.limits.header_read_timeout = Duration::from_millis(400))
            .await;
    let mut s = livez_connection(&h).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    livez(&mut s).await;
    let idle = time_to_close(&mut s).await;
    assert!(
        idle >= Duration::from_millis(300) && idle < Duration::from_secs(3),
        "closed {idle:?} after the second answer; the idle limit is 400 ms from it"
    );
}

#[tokio::test]
async fn headers_over_the_limit_get_an_anthropic_shaped_431() {
    let h = Harness::managed().await;
    // Over the 64 KiB limit but under hyper's hard cap (twice the limit).
    let big = "b".repeat(80 * 1024);
    let mut headers = auth(CLIENT_KEY).to_vec();
    headers.push(("x-big", &big));
    let r = post_json(
        &format!("{}/v1/messages", h.url),
        &headers,
        &message_body(false),
    )
    .await;
    r.assert_gateway_error(431, "invalid_request_error");
    assert!(r.text().contains("65536"), "{}", r.text());
    assert!(h.mock.requests().is_empty());
}
