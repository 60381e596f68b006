//! Graceful drain: readiness fails, no new connections, in-flight streams finish.
//! Also as a real process on SIGTERM, with the access log checked for secrets.

mod common;

use std::time::Duration;

use common::process::NodeProcess;
use common::*;
use strait_chaos::mock::{MockConfig, MockUpstream, Pacing};

fn slow_stream() -> MockConfig {
    MockConfig {
        pacing: Pacing {
            ttft: Duration::ZERO,
            interval: Duration::from_millis(100),
            tokens: 10,
        },
        ..MockConfig::default()
    }
}

#[tokio::test]
async fn drain_lets_streams_finish_and_refuses_new_work() {
    let mut h = Harness::build(slow_stream(), |_| {}, &UPSTREAM_KEYS, &[CLIENT_KEY]).await;
    let url = format!("{}/v1/messages", h.url);
    let inflight =
        tokio::spawn(async move { post_json(&url, &auth(CLIENT_KEY), &message_body(true)).await });
    tokio::time::sleep(Duration::from_millis(250)).await;

    let node = h.node.take().unwrap();
    let public = node.public_addr();
    let admin = format!("http://{}", node.admin_addr());
    let drained = tokio::spawn(node.drain());
    tokio::time::sleep(Duration::from_millis(100)).await;

    let r = get(&format!("{admin}/readyz"), &[]).await;
    assert_eq!(r.status, 503, "readiness fails while draining");
    assert_eq!(r.json()["checks"]["node:draining"][0]["status"], "fail");
    assert!(
        tokio::net::TcpStream::connect(public).await.is_err(),
        "no new connections"
    );

    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.event_names().last().map(String::as_str),
        Some("message_stop"),
        "stream finished: {}",
        r.text()
    );
    let cut = tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .expect("drain ends")
        .unwrap();
    assert_eq!(cut, 0, "nothing was cut");
}

#[tokio::test]
async fn drain_deadline_cuts_streams_that_run_too_long() {
    let mock = MockConfig {
        pacing: Pacing {
            ttft: Duration::ZERO,
            interval: Duration::from_millis(200),
            tokens: 50,
        },
        ..MockConfig::default()
    };
    let mut h = Harness::build(
        mock,
        |raw| raw.limits.drain_timeout = Duration::from_millis(500),
        &UPSTREAM_KEYS,
        &[CLIENT_KEY],
    )
    .await;
    let url = format!("{}/v1/messages", h.url);
    let inflight =
        tokio::spawn(async move { post_json(&url, &auth(CLIENT_KEY), &message_body(true)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let cut = h.node.take().unwrap().drain().await;
    assert_eq!(cut, 1);
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(inflight);
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero_and_logs_hold_no_secrets() {
    let mock = MockUpstream::start(slow_stream()).await.unwrap();
    let upstream_keys = UPSTREAM_KEYS.join(",");
    let mut node = NodeProcess::spawn(
        &["--upstream", mock.url()],
        &[
            ("STRAIT_UPSTREAM_KEYS", &upstream_keys),
            ("STRAIT_CLIENT_KEYS", CLIENT_KEY),
        ],
    );
    let url = format!("{}/v1/messages", node.url());
    // A failed auth, a plain message and a stream, so the log has a variety of lines.
    let r = post_json(&url, &auth("strait-wrong-key-zzz"), &message_body(false)).await;
    assert_eq!(r.status, 401);
    let r = post_json(&url, &auth(CLIENT_KEY), &message_body(false)).await;
    assert_eq!(r.status, 200);
    let u2 = url.clone();
    let inflight =
        tokio::spawn(async move { post_json(&u2, &auth(CLIENT_KEY), &message_body(true)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.signal("TERM");
    let r = inflight.await.unwrap();
    assert_eq!(
        r.event_names().last().map(String::as_str),
        Some("message_stop")
    );
    let code = tokio::task::spawn_blocking(move || {
        let code = node.wait(Duration::from_secs(15));
        (code, node.log())
    })
    .await
    .unwrap();
    let (code, log) = code;
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("\"target\":\"strait::access\""),
        "access lines written: {log}"
    );
    assert_eq!(log.matches("\"message\":\"request\"").count(), 3, "{log}");
    assert!(log.contains("drained"));
    for secret in UPSTREAM_KEYS
        .iter()
        .chain([&CLIENT_KEY, &"strait-wrong-key-zzz"])
    {
        assert!(!log.contains(secret), "secret {secret} in logs:\n{log}");
    }
    assert!(!log.contains("Hello, Claude"), "no bodies in logs");
}

#[tokio::test]
async fn sighup_without_tls_says_there_was_nothing_to_reload() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let mut node = NodeProcess::spawn(&["--upstream", mock.url()], &[]);
    node.signal("HUP");
    eventually("the SIGHUP log line", Duration::from_secs(5), async || {
        node.log().contains("no TLS configured, nothing to reload")
    })
    .await;
    node.signal("TERM");
    let (code, log) = tokio::task::spawn_blocking(move || {
        let code = node.wait(Duration::from_secs(15));
        (code, node.log())
    })
    .await
    .unwrap();
    assert!(!log.contains("TLS certificate reloaded"), "{log}");
    assert_eq!(code, Some(0), "SIGHUP did not stop the node: {log}");
}
