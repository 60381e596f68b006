//! The upstream key pool: a rate-limited key rests and the request moves to the next
//! key; a spent quota rests until its reset; with every key resting the gateway answers 429.

mod common;

use common::*;
use strait_chaos::mock::Fault;

async fn message(h: &Harness) -> Resp {
    h.message(false, &[]).await
}

#[tokio::test]
async fn a_429_cools_the_key_and_the_request_moves_to_the_next() {
    let h = Harness::managed().await;
    h.mock
        .set_key_fault(UPSTREAM_KEYS[0], Fault::rate_limited(30));
    for _ in 0..6 {
        let r = message(&h).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let keys: Vec<String> = h
        .mock
        .requests()
        .iter()
        .map(|r| r.header("x-api-key").unwrap().to_string())
        .collect();
    // The first key is tried at most once: after its 429 it rests for 30 s.
    assert!(
        keys.iter().filter(|k| *k == UPSTREAM_KEYS[0]).count() <= 1,
        "{keys:?}"
    );
    assert_eq!(keys.iter().filter(|k| *k == UPSTREAM_KEYS[1]).count(), 6);
    let m = h.metrics().await;
    assert!(
        m.contains(r#"strait_upstream_key_cooldowns_total{reason="transient"}"#),
        "{m}"
    );
    assert!(
        m.contains(r#"strait_upstream_keys{state="cooling_transient"} 1"#),
        "{m}"
    );
    // Some keys resting is a warning, not a failure.
    let r = get(&format!("{}/readyz", h.admin), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "warn");
}

#[tokio::test]
async fn every_key_resting_gives_a_gateway_429_with_retry_after() {
    let h = Harness::managed().await;
    for k in UPSTREAM_KEYS {
        h.mock.set_key_fault(k, Fault::rate_limited(20));
    }
    let r = message(&h).await;
    // Both keys tried; the last upstream 429 is passed through as is.
    assert_eq!(r.status, 429);
    assert_eq!(h.mock.requests().len(), 2);
    assert!(r.header("x-strait-error-source").is_none());

    let r = message(&h).await;
    r.assert_gateway_error(429, "rate_limit_error");
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((15..=20).contains(&after), "retry-after {after}");
    assert_eq!(
        h.mock.requests().len(),
        2,
        "no upstream call while every key rests"
    );
}

#[tokio::test]
async fn an_exhausted_quota_rests_until_reset_and_fails_readiness_when_all_are_spent() {
    let h = Harness::managed().await;
    for k in UPSTREAM_KEYS {
        h.mock.set_key_fault(k, Fault::quota_exhausted(2));
    }
    let r = message(&h).await;
    assert_eq!(r.status, 429);
    let m = h.metrics().await;
    assert!(
        m.contains(r#"strait_upstream_key_cooldowns_total{reason="exhausted"} 2"#),
        "{m}"
    );
    let r = message(&h).await;
    r.assert_gateway_error(429, "rate_limit_error");
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        after > 600,
        "rests until the reset time, not the 2 s retry-after: {after}"
    );
    let r = get(&format!("{}/readyz", h.admin), &[]).await;
    assert_eq!(r.status, 503, "no usable path: {}", r.text());
}

#[tokio::test]
async fn overloaded_529_is_retried_on_another_key() {
    let h = Harness::managed().await;
    h.mock.push_fault(Fault::overloaded());
    let r = message(&h).await;
    assert_eq!(r.status, 200);
    let seen = h.mock.requests();
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0].header("x-api-key"), seen[1].header("x-api-key"));
    let m = h.metrics().await;
    assert!(
        m.contains(r#"strait_upstream_retries_total{cause="status_529"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_500_is_retried_within_the_attempt_budget() {
    let h = Harness::managed().await;
    h.mock.push_fault(Fault::status(500));
    h.mock.push_fault(Fault::status(500));
    let r = message(&h).await;
    assert_eq!(r.status, 200);
    assert_eq!(h.mock.requests().len(), 3);
}
