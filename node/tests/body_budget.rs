//! The in-flight body budget (`limits.max_inflight_body_bytes`): uploads that fit are
//! served, one that does not is refused unread with 503 and `retry-after`, and the
//! budget comes back when the responses are done.

mod common;

use std::time::Duration;

use common::{eventually, Harness, CLIENT_KEY};
use strait_node::config::{RawConfig, DEFAULT_MAX_INFLIGHT_BODY_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KIB: u64 = 1024;
/// Over the HTTP/1.1 server's read-ahead (256 KiB), so these bodies are streamed to
/// the admit phase and reserved before they are read.
const BODY: u64 = 400 * KIB;

/// A node whose budget holds two `BODY`s but not three.
async fn node() -> Harness {
    Harness::managed_with(|raw| {
        raw.limits.max_body_bytes = 512 * KIB;
        raw.limits.max_inflight_body_bytes = 1024 * KIB;
    })
    .await
}

/// A Messages body of exactly `len` bytes.
fn message_of(len: u64) -> Vec<u8> {
    let head =
        br#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":""#;
    let tail = br#""}]}"#;
    let mut body = head.to_vec();
    body.resize(len as usize - tail.len(), b'a');
    body.extend_from_slice(tail);
    body
}

/// Opens a connection and sends a Messages request head framed by `framing`.
async fn open(h: &Harness, framing: &str) -> TcpStream {
    let mut s = TcpStream::connect(h.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {CLIENT_KEY}\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n{framing}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// Sends the head of a `len`-byte Messages upload and the first `sent` bytes of it.
async fn start_upload(h: &Harness, len: u64, sent: usize) -> (TcpStream, Vec<u8>) {
    let mut s = open(h, &format!("content-length: {len}")).await;
    let body = message_of(len);
    s.write_all(&body[..sent]).await.unwrap();
    (s, body[sent..].to_vec())
}

/// Sends the rest (ignoring a connection the node closed) and reads the whole answer.
async fn finish(mut s: TcpStream, rest: &[u8]) -> String {
    let _ = s.write_all(rest).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A metric's value from the admin listener's text, 0 when absent.
async fn metric(h: &Harness, name: &str) -> f64 {
    h.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

const IN_FLIGHT: &str = "strait_request_body_bytes_in_flight";
const REFUSALS: &str = "strait_request_body_budget_refusals_total";

fn assert_refused(answer: &str) {
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.starts_with("http/1.1 503"),
        "{}",
        &answer[..answer.len().min(400)]
    );
    assert!(lower.contains("\r\nretry-after: 1\r\n"), "{answer}");
    assert!(answer.contains(r#""type":"overloaded_error""#), "{answer}");
    assert!(answer.contains("in-flight body budget"), "{answer}");
}

#[tokio::test]
async fn uploads_beyond_the_budget_get_503_and_those_within_it_succeed() {
    let h = node().await;
    // Two uploads under way, half sent: their declared lengths are reserved.
    let (a, a_rest) = start_upload(&h, BODY, 100 * 1024).await;
    let (b, b_rest) = start_upload(&h, BODY, 100 * 1024).await;
    eventually(
        "both uploads reserved",
        Duration::from_secs(10),
        async || metric(&h, IN_FLIGHT).await == (2 * BODY) as f64,
    )
    .await;

    // A third does not fit: refused without its body being read, connection closed.
    let (c, c_rest) = start_upload(&h, BODY, 0).await;
    assert_refused(&finish(c, &c_rest).await);
    assert_eq!(metric(&h, REFUSALS).await, 1.0);
    // A chunked upload is refused once it outgrows what is left.
    let d = open(&h, "transfer-encoding: chunked").await;
    let mut d_rest = Vec::new();
    for piece in message_of(BODY).chunks(16 * 1024) {
        d_rest.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        d_rest.extend_from_slice(piece);
        d_rest.extend_from_slice(b"\r\n");
    }
    d_rest.extend_from_slice(b"0\r\n\r\n");
    assert_refused(&finish(d, &d_rest).await);
    assert_eq!(metric(&h, REFUSALS).await, 2.0);

    // The two within the budget complete.
    for answer in [finish(a, &a_rest).await, finish(b, &b_rest).await] {
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{}",
            &answer[..answer.len().min(400)]
        );
    }
    assert_eq!(
        h.mock
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/messages")
            .count(),
        2,
        "the refused uploads never went upstream"
    );

    // Released with the responses: the budget is whole again, and a later upload
    // (twice, so it also fits after a first one's bytes came back) succeeds.
    eventually("budget released", Duration::from_secs(10), async || {
        metric(&h, IN_FLIGHT).await == 0.0
    })
    .await;
    for _ in 0..2 {
        let (s, rest) = start_upload(&h, BODY, 0).await;
        let answer = finish(s, &rest).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{}",
            &answer[..answer.len().min(400)]
        );
    }
    eventually(
        "budget released again",
        Duration::from_secs(10),
        async || metric(&h, IN_FLIGHT).await == 0.0,
    )
    .await;
}

#[tokio::test]
async fn small_bodies_count_too_and_a_full_budget_refuses_them() {
    let h = node().await;
    let (a, a_rest) = start_upload(&h, BODY, 1024).await;
    let (b, b_rest) = start_upload(&h, BODY, 1024).await;
    eventually(
        "both uploads reserved",
        Duration::from_secs(10),
        async || metric(&h, IN_FLIGHT).await == (2 * BODY) as f64,
    )
    .await;
    // 224 KiB are left: an ordinary request fits, one of 250 KiB (read ahead whole
    // by the server) does not.
    let r = h.message(false, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (c, c_rest) = start_upload(&h, 250 * KIB, 0).await;
    assert_refused(&finish(c, &c_rest).await);
    drop((a, b, a_rest, b_rest));
    // Clients that went away give their reservations back.
    eventually(
        "budget released after the clients left",
        Duration::from_secs(10),
        async || metric(&h, IN_FLIGHT).await == 0.0,
    )
    .await;
    let r = h.message(false, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn the_budget_is_configured_and_checked_at_load() {
    let raw = RawConfig::default();
    assert_eq!(
        raw.limits.max_inflight_body_bytes,
        DEFAULT_MAX_INFLIGHT_BODY_BYTES
    );
    let c = raw.validate(vec![], vec![]).unwrap();
    assert_eq!(c.limits.max_inflight_body_bytes, 256 * 1024 * 1024);

    let c = RawConfig::from_toml("[limits]\nmax_inflight_body_bytes = 1073741824\n")
        .unwrap()
        .validate(vec![], vec![])
        .unwrap();
    assert_eq!(c.limits.max_inflight_body_bytes, 1 << 30);

    // Smaller than the largest body allowed: that body could never be served.
    let e =
        RawConfig::from_toml("[limits]\nmax_body_bytes = 2048\nmax_inflight_body_bytes = 2047\n")
            .unwrap()
            .validate(vec![], vec![])
            .unwrap_err();
    assert!(
        e.message.contains("limits.max_inflight_body_bytes"),
        "{}",
        e.message
    );
    let e = RawConfig::from_toml("[limits]\nmax_inflight_body_bytes = -1\n").unwrap_err();
    assert!(
        e.message.contains("max_inflight_body_bytes") || e.message.contains("invalid"),
        "{}",
        e.message
    );
}
