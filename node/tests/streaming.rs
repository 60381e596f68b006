//! Server-sent events through the node: unbuffered relay, usage read on the side, and
//! mid-stream failures turned into an SSE `error` event.

mod common;

use std::time::Duration;

use common::*;
use strait_chaos::mock::{MockConfig, Pacing};

fn paced(interval_ms: u64, tokens: u32) -> MockConfig {
    MockConfig {
        pacing: Pacing {
            ttft: Duration::ZERO,
            interval: Duration::from_millis(interval_ms),
            tokens,
        },
        ..MockConfig::default()
    }
}

#[tokio::test]
async fn events_arrive_one_by_one_before_the_upstream_finishes() {
    let h = Harness::build(paced(150, 6), |_| {}, &UPSTREAM_KEYS, &[CLIENT_KEY]).await;
    let r = h.message(true, &[]).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(r.header("x-accel-buffering"), Some("no"));
    assert_eq!(
        r.event_names(),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    // Each delta is its own chunk and the deltas arrive spread over the stream's ~0.9 s:
    // a buffering proxy would deliver them all at once at the end.
    let delta_times: Vec<Duration> = r
        .chunks
        .iter()
        .filter(|(_, c)| c.starts_with(b"event: content_block_delta"))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(delta_times.len(), 6, "one chunk per delta event");
    let spread = *delta_times.last().unwrap() - delta_times[0];
    assert!(
        spread >= Duration::from_millis(600),
        "deltas arrived within {spread:?}: buffered"
    );
    for pair in delta_times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(100),
            "gap {:?}",
            pair[1] - pair[0]
        );
    }
}

#[tokio::test]
async fn stream_usage_is_read_without_changing_bytes() {
    let h = Harness::build(paced(0, 5), |_| {}, &UPSTREAM_KEYS, &[CLIENT_KEY]).await;
    let r = h.message(true, &[]).await;
    assert_eq!(r.status, 200);
    // Same request straight to the mock: the relayed bytes match modulo the random ids.
    let direct = post_json(
        &format!("{}/v1/messages", h.mock.url()),
        &auth("sk-direct"),
        &message_body(true),
    )
    .await;
    let strip_ids = |s: String| {
        s.lines()
            .map(|l| {
                if l.contains("\"id\"") {
                    "ID".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip_ids(r.text()), strip_ids(direct.text()));
    let m = h.metrics().await;
    assert!(
        m.contains(r#"strait_tokens_total{direction="output",model="claude-sonnet-4-5"} 5"#),
        "{m}"
    );
    assert!(
        m.contains("strait_time_to_first_token_seconds_count{model=\"claude-sonnet-4-5\"} 1"),
        "{m}"
    );
    assert!(m.contains("strait_active_streams 0"));
}

async fn stream_with_fault(
    fault: &str,
    tweak: impl FnOnce(&mut strait_node::config::RawConfig),
) -> (Resp, String) {
    let h = Harness::build(paced(10, 8), tweak, &UPSTREAM_KEYS, &[CLIENT_KEY]).await;
    let r = h.message(true, &[("x-mock-fault", fault)]).await;
    let m = h.metrics().await;
    (r, m)
}

fn assert_ends_with_error_event(r: &Resp) {
    assert_eq!(r.status, 200, "the stream had started");
    let names = r.event_names();
    assert_eq!(
        names.last().map(String::as_str),
        Some("error"),
        "{}",
        r.text()
    );
    assert!(!names.contains(&"message_stop".to_string()));
    let last_data = r
        .text()
        .lines()
        .rev()
        .find(|l| l.starts_with("data: "))
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&last_data["data: ".len()..]).unwrap();
    assert_eq!(v["type"], "error");
    assert!(v["error"]["type"].is_string());
    assert!(r.text().ends_with("\n\n"), "the error event is complete");
}

#[tokio::test]
async fn upstream_reset_mid_stream_gives_an_error_event() {
    let (r, m) = stream_with_fault("reset-after=4", |_| {}).await;
    assert_ends_with_error_event(&r);
    assert!(
        r.event_names().contains(&"content_block_delta".to_string()),
        "some content came first"
    );
    assert!(
        m.contains(r#"strait_stream_failures_total{cause="upstream_reset"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn upstream_stall_mid_stream_times_out_into_an_error_event() {
    let (r, m) = stream_with_fault("stall-after=4", |raw| {
        raw.upstream.stream_idle_timeout = Duration::from_millis(500);
    })
    .await;
    assert_ends_with_error_event(&r);
    assert!(r.text().contains("idle timeout"));
    assert!(
        m.contains(r#"strait_stream_failures_total{cause="idle_timeout"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn upstream_error_event_passes_through_unchanged() {
    let (r, _) = stream_with_fault("error-after=5", |_| {}).await;
    assert_ends_with_error_event(&r);
    assert!(
        r.text().contains("overloaded_error"),
        "the upstream's own error event"
    );
    assert_eq!(
        r.event_names().iter().filter(|n| *n == "error").count(),
        1,
        "no second error added"
    );
}

#[tokio::test]
async fn slow_drip_is_relayed_and_reassembled_into_events() {
    let (r, _) = stream_with_fault("drip-ms=2", |_| {}).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.event_names().last().map(String::as_str),
        Some("message_stop")
    );
    // The node forwards whole events, so no chunk ends mid-event.
    for (_, c) in &r.chunks {
        assert!(
            c.ends_with(b"\n\n"),
            "chunk ends at an event boundary: {:?}",
            String::from_utf8_lossy(c)
        );
    }
}

#[tokio::test]
async fn first_event_error_is_retried_on_another_key() {
    let h = Harness::build(paced(0, 3), |_| {}, &UPSTREAM_KEYS, &[CLIENT_KEY]).await;
    h.mock.push_fault("error-after=0".parse().unwrap());
    let r = h.message(true, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.event_names().last().map(String::as_str),
        Some("message_stop"),
        "{}",
        r.text()
    );
    assert_eq!(h.mock.requests().len(), 2, "one retry");
}
