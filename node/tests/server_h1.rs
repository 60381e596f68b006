//! The node's own HTTP/1.1 server, spoken to byte by byte: keep-alive and pipelining,
//! HTTP/1.0, chunked and large uploads, `Expect: 100-continue`, and the framing it
//! refuses (the request-smuggling shapes).

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response read off a raw connection.
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one response (content-length or chunked body) from `s`, keeping whatever
/// follows it in `buf` for the next call.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Raw {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, buf, deadline).await;
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    buf.drain(..head_end);
    let status: u16 = head[9..12].parse().unwrap();
    let mut raw = Raw {
        status,
        head,
        body: Vec::new(),
    };
    if let Some(len) = raw.header("content-length") {
        let len: usize = len.parse().unwrap();
        while buf.len() < len {
            fill(s, buf, deadline).await;
        }
        raw.body = buf.drain(..len).collect();
    } else if raw.header("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(s, buf, deadline).await;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                fill(s, buf, deadline).await;
            }
            raw.body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        }
    }
    raw
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, deadline: tokio::time::Instant) {
    let mut chunk = [0u8; 16384];
    let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
        .await
        .expect("response within 10 s")
        .expect("read");
    assert!(
        n > 0,
        "connection closed mid-response: {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
}

async fn connect(h: &Harness) -> TcpStream {
    TcpStream::connect(h.url.trim_start_matches("http://"))
        .await
        .unwrap()
}

fn message_request(body: &str, extra: &str) -> String {
    format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {CLIENT_KEY}\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// Sends `n` Messages requests on `s`, each after the previous answer, and returns
/// the answers (each a 200).
async fn messages_one_by_one(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Vec<Raw> {
    let body = message_body(false).to_string();
    let mut answers = Vec::new();
    for _ in 0..n {
        s.write_all(message_request(&body, "").as_bytes())
            .await
            .unwrap();
        let r = read_response(s, buf).await;
        assert_eq!(r.status, 200, "{}", r.head);
        answers.push(r);
    }
    answers
}

/// Reads until the node closes the connection; fails if it does not within 5 s.
async fn assert_closed(s: &mut TcpStream) {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the node closes the connection")
        .ok();
}

#[tokio::test]
async fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let h = Harness::managed().await;
    let body = message_body(false).to_string();
    let mut s = connect(&h).await;
    let mut buf = Vec::new();
    for r in messages_one_by_one(&mut s, &mut buf, 3).await {
        assert_eq!(r.json()["type"], "message");
        assert!(r.header("request-id").is_some());
        assert!(r.header("connection").is_none(), "kept alive: {}", r.head);
    }
    // Three requests in one write: three answers, in order, on the same connection.
    let pipelined = format!(
        "{}GET /livez HTTP/1.1\r\nhost: x\r\n\r\n{}",
        message_request(&body, ""),
        message_request(&body, "")
    );
    s.write_all(pipelined.as_bytes()).await.unwrap();
    let a = read_response(&mut s, &mut buf).await;
    let b = read_response(&mut s, &mut buf).await;
    let c = read_response(&mut s, &mut buf).await;
    assert_eq!(a.json()["type"], "message");
    assert_eq!(b.json()["status"], "pass");
    assert_eq!(c.json()["type"], "message");
    assert_eq!(h.mock.requests().len(), 5);
}

#[tokio::test]
async fn header_fields_are_relayed_as_sent_minus_hop_by_hop_and_credentials() {
    let h = Harness::managed().await;
    let body = message_body(false).to_string();
    let mut s = connect(&h).await;
    let head = format!(
        "POST /v1/messages?beta=true HTTP/1.1\r\nHost: gw.example\r\nX-API-KEY: {CLIENT_KEY}\r\n\
         Anthropic-Version: 2023-06-01\r\nAnthropic-Beta: a\r\nanthropic-beta: b\r\n\
         Connection: keep-alive, X-Hop\r\nx-hop: secret\r\nKeep-Alive: timeout=5\r\n\
         X-Forwarded-For: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2\r\nX-Custom: kept as is\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let r = read_response(&mut s, &mut Vec::new()).await;
    assert_eq!(r.status, 200, "{}", r.head);

    let up = &h.mock.requests()[0];
    assert_eq!(up.path, "/v1/messages?beta=true");
    let all = |name: &str| -> Vec<&str> {
        up.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(
        all("anthropic-beta"),
        ["a", "b"],
        "repeated fields kept in order"
    );
    assert_eq!(all("x-custom"), ["kept as is"]);
    assert_eq!(all("anthropic-version"), ["2023-06-01"]);
    assert_eq!(all("x-forwarded-for"), ["10.0.0.1, 10.0.0.2, 127.0.0.1"]);
    assert_eq!(all("x-api-key").len(), 1);
    assert!(UPSTREAM_KEYS.contains(&all("x-api-key")[0]), "{up:?}");
    assert_eq!(all("host"), [h.mock.addr().to_string().as_str()]);
    assert_eq!(all("content-length"), [body.len().to_string().as_str()]);
    for gone in ["x-hop", "keep-alive", "connection"] {
        assert!(all(gone).is_empty(), "{gone} relayed: {up:?}");
    }
    assert!(
        up.headers.iter().all(|(_, v)| !v.contains(CLIENT_KEY)),
        "the client key stays behind"
    );
}

#[tokio::test]
async fn a_head_request_gets_the_upstream_length_and_no_body() {
    // The mock serves GET on /v1/models and answers HEAD with its 404 (a JSON error of
    // a known length): either way the answer to HEAD has a length and no body.
    let h = Harness::managed().await;
    let mut s = connect(&h).await;
    let get = format!("GET /v1/models HTTP/1.1\r\nhost: x\r\nx-api-key: {CLIENT_KEY}\r\nanthropic-version: 2023-06-01\r\n\r\n");
    s.write_all(get.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let full = read_response(&mut s, &mut buf).await;
    assert_eq!(full.status, 200, "{}", full.head);
    assert!(!full.body.is_empty());

    // HEAD, then GET on the same connection: the HEAD answer carries the upstream's
    // length and no body, so the GET's answer is read whole after it.
    let head = get.replacen("GET", "HEAD", 1);
    s.write_all(format!("{head}{get}").as_bytes())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(&mut s, &mut buf, deadline).await;
    };
    let head_answer = String::from_utf8(buf.drain(..end).collect()).unwrap();
    assert!(head_answer.starts_with("HTTP/1.1 404"), "{head_answer}");
    let length = head_answer
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no content-length: {head_answer}"));
    assert!(length.parse::<u64>().is_ok_and(|n| n > 0), "{head_answer}");
    assert!(!head_answer.contains("transfer-encoding"), "{head_answer}");
    let again = read_response(&mut s, &mut buf).await;
    assert_eq!(again.status, 200, "{}", again.head);
    assert_eq!(
        again.body, full.body,
        "the GET after the HEAD is read whole"
    );
}

#[tokio::test]
async fn http10_clients_get_a_length_and_a_close() {
    let h = Harness::managed().await;
    let mut s = connect(&h).await;
    s.write_all(b"GET /livez HTTP/1.0\r\n\r\n").await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all))
        .await
        .expect("closed after the answer")
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-length: "), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(text.ends_with("{\"status\":\"pass\"}"), "{text}");

    // HTTP/1.0 with keep-alive asked for: kept.
    let mut s = connect(&h).await;
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET /livez HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s, &mut buf).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection").as_deref(), Some("keep-alive"));
    }
}

#[tokio::test]
async fn chunked_and_large_uploads_reach_the_upstream_whole() {
    let h = Harness::managed_with(|raw| raw.limits.max_body_bytes = 4 << 20).await;
    let mut s = connect(&h).await;
    let mut buf = Vec::new();

    // Chunked, with Expect: 100-continue: the interim answer comes first.
    let body = message_body(false).to_string();
    let (a, b) = body.split_at(10);
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {CLIENT_KEY}\r\nanthropic-version: 2023-06-01\r\ntransfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let interim = read_response(&mut s, &mut buf).await;
    assert_eq!(interim.status, 100, "{}", interim.head);
    let chunks = format!(
        "{:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    s.write_all(chunks.as_bytes()).await.unwrap();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(r.status, 200, "{}", r.head);
    let seen = h.mock.requests();
    assert_eq!(seen.last().unwrap().body, body.as_bytes());

    // Over the read-ahead size: streamed to the handler as it arrives, whole upstream.
    let pad = "p".repeat(600 * 1024);
    let big = serde_json::json!({
        "model": "claude-sonnet-4-5", "max_tokens": 8, "pad": pad,
        "messages": [{"role": "user", "content": "hi"}],
    })
    .to_string();
    s.write_all(message_request(&big, "").as_bytes())
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(h.mock.requests().last().unwrap().body_len, big.len() as u64);

    // A streamed (non-buffered) route with a declared length.
    let upload = vec![b'z'; 700 * 1024];
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nhost: x\r\nx-api-key: {CLIENT_KEY}\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
        upload.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&upload).await.unwrap();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.json()["size_bytes"], upload.len() as u64);

    // And the connection still carries requests.
    s.write_all(message_request(&body, "").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf).await.status, 200);
}

#[tokio::test]
async fn ambiguous_framing_is_refused_and_never_forwarded() {
    let h = Harness::managed().await;
    let body = message_body(false).to_string();
    for smuggle in [
        // Both framings: which one ends the body is exactly what smuggling exploits.
        format!(
            "transfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\nGET /v1/models HTTP/1.1\r\n",
            body.len()
        ),
        "transfer-encoding: gzip, chunked\r\n".to_string(),
        "transfer-encoding: xchunked\r\n".to_string(),
        "content-length: 3\r\n".to_string(),
    ] {
        let mut s = connect(&h).await;
        let req = message_request(&body, &smuggle);
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf).await;
        assert_eq!(r.status, 400, "{smuggle:?}: {}", r.head);
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
        assert_eq!(r.header("x-strait-error-source").as_deref(), Some("gateway"));
        assert_eq!(r.header("connection").as_deref(), Some("close"));
        assert_closed(&mut s).await;
    }
    assert!(h.mock.requests().is_empty(), "nothing reached the upstream");
    let m = h.metrics().await;
    assert!(
        m.contains(r#"strait_gateway_errors_total{type="invalid_request_error"} 4"#),
        "{m}"
    );

    // A malformed head gets the same treatment.
    let mut s = connect(&h).await;
    s.write_all(b"GET /v1/models HTTP/1.1\r\nno colon here\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s, &mut Vec::new()).await;
    assert_eq!(r.status, 400);
    assert_closed(&mut s).await;

    // Still serving.
    assert_eq!(h.message(false, &[]).await.status, 200);
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_without_100_continue() {
    let h = Harness::managed_with(|raw| raw.limits.max_body_bytes = 1024).await;
    let mut s = connect(&h).await;
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {CLIENT_KEY}\r\nanthropic-version: 2023-06-01\r\ncontent-length: 5000\r\nexpect: 100-continue\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The client waits for 100 Continue before sending: the answer must come first.
    let r = read_response(&mut s, &mut Vec::new()).await;
    assert_eq!(r.status, 413, "{}", r.head);
    assert_eq!(r.json()["error"]["type"], "request_too_large");
    assert_closed(&mut s).await;
    assert!(h.mock.requests().is_empty());
}

/// A keep-alive connection idle between requests is closed as soon as the node
/// drains (its wait for the drain signal lives as long as the connection, across
/// requests), and the drain does not wait for it.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_when_the_node_drains() {
    let mut h = Harness::managed().await;
    let mut s = connect(&h).await;
    messages_one_by_one(&mut s, &mut Vec::new(), 3).await;
    let node = h.node.take().unwrap();
    let drained = tokio::spawn(node.drain());
    assert_closed(&mut s).await;
    assert_eq!(
        drain_result(drained).await,
        0,
        "the idle connection was closed, not cut"
    );
}

#[tokio::test]
async fn too_many_header_fields_are_named_as_such() {
    let h = Harness::managed().await;
    let mut s = connect(&h).await;
    let mut head = format!("GET /v1/models HTTP/1.1\r\nhost: x\r\nx-api-key: {CLIENT_KEY}\r\n");
    for i in 0..129 {
        head.push_str(&format!("x-f{i}: v\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let r = read_response(&mut s, &mut Vec::new()).await;
    assert_eq!(r.status, 431, "{}", r.head);
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("more than 128 header fields"), "{message}");
    assert!(h.mock.requests().is_empty());
}

#[tokio::test]
async fn an_http11_request_without_host_is_refused() {
    let h = Harness::managed().await;
    let mut s = connect(&h).await;
    let req = format!("GET /v1/models HTTP/1.1\r\nx-api-key: {CLIENT_KEY}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut s, &mut Vec::new()).await;
    assert_eq!(r.status, 400, "{}", r.head);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert!(h.mock.requests().is_empty(), "never forwarded");
    // HTTP/1.0 has no Host requirement.
    let mut s = connect(&h).await;
    let req = format!(
        "GET /v1/models HTTP/1.0\r\nx-api-key: {CLIENT_KEY}\r\nanthropic-version: 2023-06-01\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut s, &mut Vec::new()).await;
    assert_eq!(r.status, 200, "{}", r.head);
}
