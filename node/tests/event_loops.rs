//! The public listener's event loops (`accept::loops`, one per worker): connections
//! are spread over every loop and each is served; a drain waits for the streams on
//! every loop; a port another process holds is refused even when it shares the port
//! with `SO_REUSEPORT` as the loops do.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use strait_chaos::mock::{MockConfig, Pacing};
use strait_node::config::{RawConfig, Secret};
use strait_node::Node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOOPS: usize = 4;

/// One Messages request on a connection of its own; the response's status line.
async fn one_request(addr: SocketAddr) -> String {
    let body = message_body(false).to_string();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {CLIENT_KEY}\r\n\
         anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("answered")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    text.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn connections_spread_over_every_event_loop_and_each_is_served() {
    let h = Harness::managed_with(|raw| raw.runtime.workers = Some(LOOPS)).await;
    let addr = h.node().public_addr();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        tasks.spawn(one_request(addr));
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), "HTTP/1.1 200 OK");
    }
    // The kernel spreads connections by address hash: with 64 over four loops, one
    // left without any would take odds of about 4 * (3/4)^64, 4e-8.
    let mut total = 0.0;
    for i in 0..LOOPS {
        let n = metric_at(
            &h.admin,
            &format!("strait_event_loop_connections_total{{event_loop=\"{i}\"}}"),
        )
        .await;
        assert!(n >= 1.0, "event loop {i} accepted no connection");
        total += n;
    }
    assert_eq!(total, 64.0, "every connection counted on one loop");
}

#[tokio::test]
async fn a_drain_lets_the_streams_on_every_event_loop_finish() {
    let mock = MockConfig {
        pacing: Pacing {
            ttft: Duration::ZERO,
            interval: Duration::from_millis(100),
            tokens: 8,
        },
        ..MockConfig::default()
    };
    let mut h = Harness::build(
        mock,
        |raw| raw.runtime.workers = Some(LOOPS),
        &UPSTREAM_KEYS,
        &[CLIENT_KEY],
    )
    .await;
    let url = format!("{}/v1/messages", h.url);
    let mut streams = Vec::new();
    for _ in 0..16 {
        let url = url.clone();
        streams.push(tokio::spawn(async move {
            post_json(&url, &auth(CLIENT_KEY), &message_body(true)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    let node = h.node.take().unwrap();
    let drained = tokio::spawn(node.drain());
    for s in streams {
        s.await.unwrap().assert_stream_finished();
    }
    assert_eq!(drain_result(drained).await, 0, "nothing was cut");
}

#[tokio::test]
async fn a_port_another_process_shares_with_so_reuseport_is_refused() {
    use socket2::{Domain, Protocol, Socket, Type};
    let other = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    other.set_reuse_address(true).unwrap();
    other.set_reuse_port(true).unwrap();
    other
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    other.listen(16).unwrap();
    let taken = other.local_addr().unwrap().as_socket().unwrap();

    let state = tempfile::tempdir().unwrap();
    let mut raw = RawConfig::default();
    raw.listen.public = taken.to_string();
    raw.listen.admin = "127.0.0.1:0".into();
    raw.upstream.base_url = "http://127.0.0.1:9".into();
    raw.cluster.state_dir = state.path().to_path_buf();
    raw.runtime.workers = Some(LOOPS);
    quiet_probes(&mut raw);
    let config = raw
        .validate(
            vec![Secret::new(UPSTREAM_KEYS[0])],
            vec![Secret::new(CLIENT_KEY)],
        )
        .unwrap();
    let Err(e) = Node::start(config).await else {
        panic!("a node started on a port another socket holds");
    };
    assert!(
        e.message
            .contains(&format!("listen.public: cannot listen on {taken}")),
        "{}",
        e.message
    );
}
