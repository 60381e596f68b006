//! The node's own HTTP/1.1 upstream client against a scripted raw upstream: body
//! framings (length, chunked with extensions and trailers, until close), connection
//! reuse, and connections the upstream closed while they sat in the pool.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw HTTP/1.1 upstream: the reply for each request is chosen by its path.
struct RawUpstream {
    url: String,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

const REPLY: &str = r#"{"id":"msg_raw","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":2}}"#;

async fn raw_upstream() -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (c, h) = (connections.clone(), heads.clone());
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let heads = h.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: head, then a content-length body.
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < end + len {
                        let mut chunk = [0u8; 4096];
                        let n = sock.read(&mut chunk).await.unwrap();
                        assert!(n > 0, "request body cut short");
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    buf.drain(..end + len);
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    heads.lock().unwrap().push(head);
                    let (reply, close) = match path.as_str() {
                        "/v1/messages?framing=chunked" => {
                            let (a, b) = REPLY.split_at(20);
                            (
                                format!(
                                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                     transfer-encoding: chunked\r\n\r\n\
                                     {:x};ext=1\r\n{a}\r\n{:X}\r\n{b}\r\n0\r\nx-trailer: t\r\n\r\n",
                                    a.len(),
                                    b.len()
                                ),
                                false,
                            )
                        }
                        "/v1/messages?framing=close" => (
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{REPLY}"
                            ),
                            true,
                        ),
                        // Keep-alive as far as the headers say, then closed anyway: the
                        // pooled connection is dead by the time it is used again.
                        "/v1/messages?framing=drop" => (
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                 content-length: {}\r\n\r\n{REPLY}",
                                REPLY.len()
                            ),
                            true,
                        ),
                        _ => (
                            format!(
                                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\
                                 content-type: application/json\r\nconnection: keep-alive\r\n\
                                 content-length: {}\r\n\r\n{REPLY}",
                                REPLY.len()
                            ),
                            false,
                        ),
                    };
                    if sock.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    RawUpstream {
        url,
        connections,
        heads,
    }
}

async fn node_for(up: &RawUpstream) -> Harness {
    let url = up.url.clone();
    Harness::managed_with(move |raw| raw.upstream.base_url = url).await
}

async fn ask(h: &Harness, query: &str) -> Resp {
    post_json(
        &format!("{}/v1/messages{query}", h.url),
        &auth(CLIENT_KEY),
        &message_body(false),
    )
    .await
}

#[tokio::test]
async fn every_framing_is_relayed_whole_and_usage_read() {
    let up = raw_upstream().await;
    let h = node_for(&up).await;
    for query in ["", "?framing=chunked", "?framing=close"] {
        let r = ask(&h, query).await;
        assert_eq!(r.status, 200, "{query}: {}", r.text());
        assert_eq!(r.text(), REPLY, "{query}");
    }
    let m = h.metrics().await;
    assert!(
        m.contains(r#"strait_tokens_total{direction="output",model="claude-sonnet-4-5"} 6"#),
        "usage read from every framing: {m}"
    );
    // The request head the upstream saw: our host, a pool key, a length, no client key.
    let heads = up.heads.lock().unwrap().clone();
    let first = heads[0].to_ascii_lowercase();
    assert!(
        first.starts_with("post /v1/messages http/1.1\r\n"),
        "{first}"
    );
    assert!(
        first.contains(&format!("host: {}\r\n", &up.url[7..])),
        "{first}"
    );
    assert!(
        first.contains(&format!(
            "x-api-key: {}\r\n",
            UPSTREAM_KEYS[0].to_ascii_lowercase()
        )) || first.contains(&format!(
            "x-api-key: {}\r\n",
            UPSTREAM_KEYS[1].to_ascii_lowercase()
        ))
    );
    assert!(!first.contains(&CLIENT_KEY.to_ascii_lowercase()), "{first}");
    assert!(first.contains("content-length: "), "{first}");
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let up = raw_upstream().await;
    let url = up.url.clone();
    let h = Harness::managed_with(move |raw| {
        raw.upstream.base_url = url;
        raw.runtime.workers = Some(1);
    })
    .await;
    for _ in 0..20 {
        assert_eq!(ask(&h, "").await.status, 200);
    }
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "20 sequential requests share one upstream connection"
    );
    assert!(h.metrics().await.contains("strait_upstream_connections 1"));
}

#[tokio::test]
async fn each_event_loop_keeps_its_own_upstream_connections() {
    const LOOPS: usize = 4;
    let up = raw_upstream().await;
    let url = up.url.clone();
    let h = Harness::managed_with(move |raw| {
        raw.upstream.base_url = url;
        raw.runtime.workers = Some(LOOPS);
    })
    .await;
    // Each request on a client connection of its own, which may land on any loop.
    for _ in 0..40 {
        assert_eq!(ask(&h, "").await.status, 200);
    }
    let mut loops_used = 0;
    for i in 0..LOOPS {
        let series = format!("strait_event_loop_connections_total{{event_loop=\"{i}\"}}");
        if metric_at(&h.admin, &series).await > 0.0 {
            loops_used += 1;
        }
    }
    let opened = up.connections.load(Ordering::SeqCst);
    assert!(
        loops_used > 1,
        "the 40 client connections spread over the loops"
    );
    assert_eq!(
        opened, loops_used,
        "one upstream connection per loop that served, each reused by its loop"
    );
}

#[tokio::test]
async fn connections_closed_by_the_upstream_are_not_reused() {
    let up = raw_upstream().await;
    let h = node_for(&up).await;
    for _ in 0..5 {
        let r = ask(&h, "?framing=drop").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), REPLY);
        // Let the upstream's FIN arrive while the connection sits in the pool.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 5);
    let m = h.metrics().await;
    assert!(
        !m.contains("strait_upstream_errors_total{kind=\"protocol\"}"),
        "{m}"
    );
}
