//! Request bodies that come too slowly (issue 13, item 2): silent or trickling bodies
//! over HTTP/1.1 (declared, chunked, read ahead, buffered through the channel,
//! streamed upstream) and HTTP/2 get a 408 `invalid_request_error` and lose their
//! connection; a slow but steady upload goes through; a connection held in a body
//! still counts against `limits.max_connections`.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body::{Body, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What a case sends after its head, and then it falls silent (never closing).
struct Case {
    name: &'static str,
    /// Request line and framing fields; the auth fields and the blank line are added.
    head: String,
    /// Sent with the head.
    first: Vec<u8>,
    /// Then `count` pieces of `size` bytes, one every `every`.
    drip: (usize, Duration, usize),
    body_read_timeout: Duration,
    min_upload_rate: u64,
    expect: Expect,
}

#[derive(Debug, PartialEq)]
enum Expect {
    /// 408, counted under this reason.
    TimedOut(&'static str),
    /// The upload is complete and the mock answers.
    Answered(u16),
}

fn post(path: &str, framing: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{framing}")
}

fn cases() -> Vec<Case> {
    let one_second = Duration::from_secs(1);
    let body = message_body(false).to_string().into_bytes();
    // No floor here, so the reason cannot depend on how the first bytes were split
    // (a window that began with a wait ends just before the silence does, and its few
    // bytes are under any floor); the HTTP/2 test runs with the floor on.
    let silent = |name, head: String, first: Vec<u8>| Case {
        name,
        head,
        first,
        drip: (0, Duration::ZERO, 0),
        body_read_timeout: one_second,
        min_upload_rate: 0,
        expect: Expect::TimedOut("silent"),
    };
    vec![
        silent(
            "silent after the head, small declared body (read ahead)",
            post("/v1/messages", "content-length: 100\r\n"),
            Vec::new(),
        ),
        silent(
            "silent after part of a small declared body",
            post("/v1/messages", "content-length: 100\r\n"),
            body[..10].to_vec(),
        ),
        silent(
            "silent in a large declared JSON body (buffered through the channel)",
            post("/v1/messages", "content-length: 1048576\r\n"),
            vec![b' '; 64 * 1024],
        ),
        silent(
            "silent in a chunked body",
            post("/v1/messages", "transfer-encoding: chunked\r\n"),
            b"5\r\n{\"mod\r\n".to_vec(),
        ),
        silent(
            "silent in a file upload already relayed upstream",
            post("/v1/files", "content-length: 1048576\r\n"),
            vec![b'z'; 64 * 1024],
        ),
        Case {
            name: "a byte every 100 ms, under 1 KiB/s",
            head: post("/v1/messages", "content-length: 1000\r\n"),
            first: Vec::new(),
            drip: (1, Duration::from_millis(100), 1000),
            body_read_timeout: one_second,
            min_upload_rate: 1024,
            expect: Expect::TimedOut("slow"),
        },
        Case {
            name: "a chunked file upload, 10 bytes every 100 ms",
            head: post("/v1/files", "transfer-encoding: chunked\r\n"),
            first: Vec::new(),
            drip: (10, Duration::from_millis(100), 1000),
            body_read_timeout: one_second,
            min_upload_rate: 1024,
            expect: Expect::TimedOut("slow"),
        },
        Case {
            // 40 KiB/s against a floor of 1 KiB/s, in 2 s windows: a generous margin
            // for a loaded machine.
            name: "slow but steady: 4 KiB every 100 ms",
            head: post("/v1/files", "content-length: 40960\r\n"),
            first: Vec::new(),
            drip: (4096, Duration::from_millis(100), 10),
            body_read_timeout: Duration::from_secs(2),
            min_upload_rate: 1024,
            expect: Expect::Answered(200),
        },
    ]
}

/// The piece of a drip: chunk-framed when the case's body is chunked.
fn piece(case: &Case, size: usize) -> Vec<u8> {
    let data = vec![b'a'; size];
    if case.head.contains("chunked") {
        let mut framed = format!("{size:x}\r\n").into_bytes();
        framed.extend_from_slice(&data);
        framed.extend_from_slice(b"\r\n");
        framed
    } else {
        data
    }
}

/// Everything the node sends until it closes the connection (or 15 s pass).
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out))
        .await
        .expect("the node closes the connection");
    out
}

/// Status, head and body of the one response in `raw`.
fn split(raw: &[u8]) -> (u16, String, serde_json::Value) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("a response: {text:?}"));
    let status = head[9..12].parse().unwrap();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON ({e}): {body:?}"));
    (status, head.to_ascii_lowercase(), json)
}

fn assert_timeout_error(v: &serde_json::Value) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("request body"), "{v}");
}

/// The value of a metric line starting with `series`, 0 if absent.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn http1_bodies_too_slow_get_408_and_lose_the_connection() {
    for case in cases() {
        let h = Harness::managed_with(|raw| {
            raw.limits.body_read_timeout = case.body_read_timeout;
            raw.limits.min_upload_rate = case.min_upload_rate;
        })
        .await;
        let mut s = TcpStream::connect(h.url.trim_start_matches("http://"))
            .await
            .unwrap();
        let mut head = case.head.clone();
        head.push_str(&format!(
            "x-api-key: {CLIENT_KEY}\r\nanthropic-version: 2023-06-01\r\n\r\n"
        ));
        let mut out = head.into_bytes();
        out.extend_from_slice(&case.first);
        s.write_all(&out).await.unwrap();
        let mut last_sent = Instant::now();

        // Drip while the node takes it; a 408 ends the sending early.
        let (size, every, count) = case.drip;
        for _ in 0..count {
            tokio::time::sleep(every).await;
            if s.write_all(&piece(&case, size)).await.is_err() {
                break;
            }
            last_sent = Instant::now();
            let mut probe = [0u8; 1];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::ZERO, s.peek(&mut probe)).await {
                if n > 0 {
                    break;
                }
            }
        }
        if case.head.contains("chunked") && case.expect == Expect::Answered(200) {
            s.write_all(b"0\r\n\r\n").await.unwrap();
        }

        match case.expect {
            Expect::TimedOut(reason) => {
                let raw = read_until_closed(&mut s).await;
                let silence = last_sent.elapsed();
                let (status, head, json) = split(&raw);
                assert_eq!(status, 408, "{}: {head}", case.name);
                assert!(head.contains("connection: close"), "{}: {head}", case.name);
                assert!(
                    head.contains("x-strait-error-source: gateway"),
                    "{}",
                    case.name
                );
                assert_timeout_error(&json);
                if reason == "silent" {
                    assert!(
                        silence >= case.body_read_timeout.mul_f32(0.9),
                        "{}: cut after {silence:?} of silence",
                        case.name
                    );
                }
                let m = h.metrics().await;
                let series = format!("strait_request_body_timeouts_total{{reason=\"{reason}\"}}");
                assert_eq!(metric(&m, &series), 1, "{}: {m}", case.name);
                assert_eq!(
                    metric(
                        &m,
                        "strait_gateway_errors_total{type=\"invalid_request_error\"}"
                    ),
                    1,
                    "{}",
                    case.name
                );
                // Nothing reached the upstream whole (the mock records a body it
                // could not read as empty), and the dropped attempt is not held
                // against the upstream.
                assert!(
                    h.mock.requests().iter().all(|r| r.body_len == 0),
                    "{}",
                    case.name
                );
                assert!(
                    !m.contains("strait_upstream_errors_total{"),
                    "{}: {m}",
                    case.name
                );
            }
            Expect::Answered(status) => {
                let mut buf = vec![0u8; 16 * 1024];
                let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                    .await
                    .expect("an answer")
                    .unwrap();
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(
                    text.starts_with(&format!("HTTP/1.1 {status}")),
                    "{}: {text}",
                    case.name
                );
                let m = h.metrics().await;
                assert!(!m.contains("strait_request_body_timeouts_total{"), "{m}");
            }
        }
    }
}

/// A request body fed by the test, piece by piece.
struct Fed(mpsc::Receiver<Bytes>);

impl Body for Fed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d))))
    }
}

#[tokio::test]
async fn http2_silent_bodies_get_408() {
    let h = Harness::managed_with(|raw| {
        raw.limits.body_read_timeout = Duration::from_secs(1);
    })
    .await;
    // (path, what is sent before the silence)
    for (path, first) in [
        ("/v1/messages", Bytes::new()),
        ("/v1/messages", Bytes::from_static(b"{\"model\":")),
        ("/v1/files", Bytes::from(vec![b'z'; 64 * 1024])),
    ] {
        let tcp = TcpStream::connect(h.url.trim_start_matches("http://"))
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let (tx, rx) = mpsc::channel(4);
        if !first.is_empty() {
            tx.send(first).await.unwrap();
        }
        let req = http::Request::post(format!("{}{path}", h.url))
            .header("x-api-key", CLIENT_KEY)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(Fed(rx))
            .unwrap();
        let started = Instant::now();
        let resp = tokio::time::timeout(Duration::from_secs(15), sender.send_request(req))
            .await
            .expect("an answer within 15 s")
            .expect("an answer, not a reset");
        assert!(started.elapsed() >= Duration::from_millis(900), "{path}");
        let r = collect(resp, started).await;
        assert_eq!(r.status, 408, "{path}: {}", r.text());
        assert_eq!(r.header("x-strait-error-source"), Some("gateway"));
        assert_timeout_error(&r.json());
        drop(tx);
    }
    // Silent, or (when the first bytes came after a wait) slow a moment before that.
    let m = h.metrics().await;
    let cut = metric(&m, "strait_request_body_timeouts_total{reason=\"silent\"}")
        + metric(&m, "strait_request_body_timeouts_total{reason=\"slow\"}");
    assert_eq!(cut, 3, "{m}");
    assert!(h.mock.requests().iter().all(|r| r.body_len == 0));
    assert!(!m.contains("strait_upstream_errors_total{"), "{m}");
}

#[tokio::test]
async fn connections_held_in_slow_bodies_count_against_max_connections() {
    let timeout = Duration::from_secs(4);
    let h = Harness::managed_with(|raw| {
        raw.limits.max_connections = 2;
        raw.limits.body_read_timeout = timeout;
    })
    .await;
    let addr = h.url.trim_start_matches("http://").to_string();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {CLIENT_KEY}\r\nanthropic-version: 2023-06-01\r\ncontent-length: 100\r\n\r\n"
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        held.push(s);
    }
    // A third client gets no answer while both slots are held in bodies (the backlog
    // is first come, first served: the held ones have the slots).
    let mut third = TcpStream::connect(&addr).await.unwrap();
    third
        .write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf))
            .await
            .is_err(),
        "served while the slots were held"
    );

    // The held ones are cut; then the third is served.
    for s in &mut held {
        let (status, _, json) = split(&read_until_closed(s).await);
        assert_eq!(status, 408);
        assert_timeout_error(&json);
    }
    drop(held);
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}
