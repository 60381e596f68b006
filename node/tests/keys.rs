//! The upstream key pool after Anthropic's limit model: a 429 cools one scope
//! (endpoint family, model class) of one organisation for its `retry-after` while
//! other scopes and organisations keep flowing; a refused key is retired; a billing
//! or spend-limit error rests its organisation; a 529 is retried and passed on as a
//! 529, never held against a key.

mod common;

use std::time::Duration;

use common::*;
use strait_chaos::mock::{Fault, MockConfig, MockEndpoint, MockLimit};

const K1: &str = "sk-ant-upstream-one-0001";
const K2: &str = "sk-ant-upstream-two-0002";
const K3: &str = "sk-ant-upstream-three-0003";

/// A managed node whose upstream key entries are `entries` (`org=... KEY`).
async fn with_keys(entries: &[&str]) -> Harness {
    Harness::build(MockConfig::default(), |_| {}, entries, &[CLIENT_KEY]).await
}

async fn message_for(h: &Harness, model: &str) -> Resp {
    let mut body = message_body(false);
    body["model"] = model.into();
    post_json(&format!("{}/v1/messages", h.url), &auth(CLIENT_KEY), &body).await
}

async fn sonnet(h: &Harness) -> Resp {
    message_for(h, "claude-sonnet-4-5").await
}

async fn count_tokens(h: &Harness) -> Resp {
    let body = serde_json::json!({
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": "Hello"}],
    });
    post_json(
        &format!("{}/v1/messages/count_tokens", h.url),
        &auth(CLIENT_KEY),
        &body,
    )
    .await
}

async fn models(h: &Harness) -> Resp {
    get(&format!("{}/v1/models", h.url), &auth(CLIENT_KEY)).await
}

fn keys_seen(h: &Harness) -> Vec<String> {
    h.mock
        .requests()
        .iter()
        .map(|r| r.header("x-api-key").unwrap().to_string())
        .collect()
}

async fn readyz(h: &Harness) -> Resp {
    get(&format!("{}/readyz", h.admin), &[]).await
}

fn retry_after(r: &Resp) -> u64 {
    r.header("retry-after").unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_burst_on_sonnet_leaves_haiku_count_tokens_and_models_served() {
    let h = with_keys(&[&format!("org=acme {K1}"), &format!("org=acme {K2}")]).await;
    h.mock.set_key_org(K1, "acme");
    h.mock.set_key_org(K2, "acme");
    h.mock.set_limit(
        MockEndpoint::Messages,
        Some("sonnet"),
        MockLimit {
            requests: 1,
            per: Duration::from_secs(30),
        },
    );
    assert_eq!(sonnet(&h).await.status, 200);
    // The bucket is empty: the upstream's 429 comes back as it is, after one attempt
    // only (the other key belongs to the same organisation: same answer).
    let before = h.mock.requests().len();
    let r = sonnet(&h).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(
        r.header("x-strait-error-source").is_none(),
        "the upstream's own 429"
    );
    assert_eq!(
        h.mock.requests().len(),
        before + 1,
        "no second attempt on the same org"
    );

    // Now the gateway answers for that scope without calling upstream...
    let r = sonnet(&h).await;
    r.assert_gateway_error(429, "rate_limit_error");
    assert_eq!(r.header("x-strait-ratelimited"), Some("gateway"));
    assert_eq!(r.header("x-strait-upstream-scope"), Some("messages/sonnet"));
    assert!((25..=30).contains(&retry_after(&r)), "{}", retry_after(&r));
    assert_eq!(h.mock.requests().len(), before + 1);

    // ...and everything else still flows.
    let r = message_for(&h, "claude-haiku-4-5").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(count_tokens(&h).await.status, 200);
    assert_eq!(models(&h).await.status, 200);
    assert_eq!(h.mock.rate_limited_count(), 1);

    let m = h.metrics().await;
    assert!(
        m.contains(r#"org="acme",reason="rate_limited",scope="messages/sonnet"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"strait_upstream_keys{state="cooling"} 2"#),
        "{m}"
    );
    let r = get(&format!("{}/keys", h.admin), &[]).await;
    let keys = &r.json()["pools"][0]["keys"];
    assert_eq!(keys[0]["org"], "acme", "{}", r.text());
    assert_eq!(keys[0]["state"], "usable");
    assert_eq!(
        keys[1]["cooling"][0]["scope"],
        "messages/sonnet",
        "{}",
        r.text()
    );
    assert!(!r.text().contains("sk-ant"), "never a key");
    let r = readyz(&h).await;
    assert_eq!(r.status, 200, "a cooled scope moves nobody away");
    assert_eq!(r.json()["status"], "warn");
    assert!(
        r.text().contains("every key cooling for messages/sonnet"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn a_429_moves_the_request_to_another_organisation_not_to_the_same_one() {
    let h = with_keys(&[
        &format!("org=a {K1}"),
        &format!("org=a {K2}"),
        &format!("org=b {K3}"),
    ])
    .await;
    h.mock.set_key_fault(K1, Fault::rate_limited(30));
    for _ in 0..6 {
        let r = sonnet(&h).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let keys = keys_seen(&h);
    assert!(keys.iter().filter(|k| *k == K1).count() <= 1, "{keys:?}");
    assert_eq!(
        keys.iter().filter(|k| *k == K2).count(),
        0,
        "K2 shares K1's organisation: {keys:?}"
    );
    assert_eq!(keys.iter().filter(|k| *k == K3).count(), 6, "{keys:?}");
}

#[tokio::test]
async fn the_gateway_429_carries_the_scope_and_the_earliest_retry_after() {
    let h = with_keys(&[K1, K2]).await;
    h.mock.set_key_fault(K1, Fault::rate_limited(20));
    h.mock.set_key_fault(K2, Fault::rate_limited(8));
    let r = sonnet(&h).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        h.mock.requests().len(),
        2,
        "keys without org are orgs of their own"
    );

    let r = sonnet(&h).await;
    r.assert_gateway_error(429, "rate_limit_error");
    assert_eq!(r.header("x-strait-upstream-scope"), Some("messages/sonnet"));
    assert!((6..=8).contains(&retry_after(&r)), "{}", retry_after(&r));
    assert!(r.text().contains("messages/sonnet"), "{}", r.text());
    assert_eq!(
        h.mock.requests().len(),
        2,
        "no upstream call while the scope cools"
    );
}

#[tokio::test]
async fn a_spent_quota_cools_for_retry_after_not_until_the_reset() {
    let h = Harness::managed().await;
    // Both keys answer 429 with remaining 0 and a reset far away, retry-after 1 s.
    h.mock.push_fault(Fault::quota_exhausted(1));
    h.mock.push_fault(Fault::quota_exhausted(1));
    assert_eq!(sonnet(&h).await.status, 429);
    let r = sonnet(&h).await;
    r.assert_gateway_error(429, "rate_limit_error");
    assert!(retry_after(&r) <= 1, "{}", retry_after(&r));
    assert_eq!(readyz(&h).await.status, 200, "cooling is no outage");
    eventually(
        "the scope to cool off",
        Duration::from_secs(5),
        async || sonnet(&h).await.status == 200,
    )
    .await;
}

#[tokio::test]
async fn overloaded_529_is_retried_on_another_key() {
    let h = Harness::managed().await;
    h.mock.push_fault(Fault::overloaded());
    let r = sonnet(&h).await;
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
async fn a_529_that_persists_is_passed_on_as_a_529_and_cools_nothing() {
    let h = Harness::managed().await;
    for _ in 0..3 {
        h.mock.push_fault(Fault::overloaded());
    }
    let r = sonnet(&h).await;
    assert_eq!(r.status, 529, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "overloaded_error");
    assert!(
        r.header("x-strait-error-source").is_none(),
        "the upstream's own answer"
    );
    assert_eq!(h.mock.requests().len(), 3, "every attempt of the budget");
    // Nothing rests: the next call is served at once, by either key.
    assert_eq!(sonnet(&h).await.status, 200);
    let m = h.metrics().await;
    assert!(!m.contains("strait_upstream_key_cooldowns_total{"), "{m}");
    assert!(
        m.contains(r#"strait_upstream_keys{state="ready"} 2"#),
        "{m}"
    );
    assert_eq!(readyz(&h).await.json()["status"], "pass");
}

#[tokio::test]
async fn a_500_is_retried_within_the_attempt_budget() {
    let h = Harness::managed().await;
    h.mock.push_fault(Fault::status(500));
    h.mock.push_fault(Fault::status(500));
    let r = sonnet(&h).await;
    assert_eq!(r.status, 200);
    assert_eq!(h.mock.requests().len(), 3);
}

#[tokio::test]
async fn refused_pool_keys_are_retired_and_the_client_never_hears_its_key_is_wrong() {
    // (how the key is refused, the reason recorded)
    for (forbid, reason) in [(false, "revoked"), (true, "forbidden")] {
        let h = with_keys(&[K1, K2]).await;
        if forbid {
            h.mock.forbid_key(K1);
        } else {
            h.mock.revoke_key(K1);
        }
        for _ in 0..4 {
            let r = sonnet(&h).await;
            assert_eq!(r.status, 200, "{reason}: {}", r.text());
        }
        let keys = keys_seen(&h);
        assert_eq!(
            keys.iter().filter(|k| *k == K1).count(),
            1,
            "{reason}: {keys:?}"
        );
        let m = h.metrics().await;
        assert!(
            m.contains(&format!(
                r#"strait_upstream_keys_retired_total{{key="k1",org="none",reason="{reason}"}} 1"#
            )),
            "{m}"
        );
        assert!(
            m.contains(r#"strait_upstream_keys{state="retired"} 1"#),
            "{m}"
        );
        let r = readyz(&h).await;
        assert_eq!(r.json()["status"], "warn", "{}", r.text());
        assert!(r.text().contains("refused by the upstream"), "{}", r.text());

        // The last key goes too: the client gets the gateway's 503, not a 401/403.
        if forbid {
            h.mock.forbid_key(K2);
        } else {
            h.mock.revoke_key(K2);
        }
        let r = sonnet(&h).await;
        r.assert_gateway_error(503, "api_error");
        assert!(r.text().contains("not about your API key"), "{}", r.text());
        let r = sonnet(&h).await;
        r.assert_gateway_error(503, "api_error");
        assert!(
            r.text().contains("2 refused by the upstream"),
            "{}",
            r.text()
        );
        assert_eq!(readyz(&h).await.status, 503, "no key can serve anything");
        // No key text anywhere in what the client or the operator sees.
        assert!(!r.text().contains("sk-ant"));
        assert!(!h.metrics().await.contains("sk-ant"));
    }
}

#[tokio::test]
async fn billing_and_spend_limit_errors_rest_the_organisation() {
    for spend in [false, true] {
        let h = with_keys(&[&format!("org=a {K1}"), &format!("org=b {K2}")]).await;
        h.mock.set_key_org(K1, "a");
        h.mock.set_key_org(K2, "b");
        if spend {
            h.mock.set_org_spend_limit("a", true);
        } else {
            h.mock.set_org_billing_error("a", true);
        }
        for _ in 0..4 {
            let r = sonnet(&h).await;
            assert_eq!(r.status, 200, "{}", r.text());
            // Other scopes too: the whole organisation rests, not one scope.
            assert_eq!(count_tokens(&h).await.status, 200);
        }
        let keys = keys_seen(&h);
        assert_eq!(keys.iter().filter(|k| *k == K1).count(), 1, "{keys:?}");
        let reason = if spend { "spend_limit" } else { "billing" };
        let m = h.metrics().await;
        assert!(
            m.contains(&format!(
                r#"{{key="k1",org="a",reason="{reason}",scope="all"}} 1"#
            )),
            "{m}"
        );
        assert!(
            m.contains(r#"strait_upstream_keys{state="resting"} 1"#),
            "{m}"
        );

        // Organisation b runs out as well: the gateway says so, with the rest's end.
        if spend {
            h.mock.set_org_spend_limit("b", true);
        } else {
            h.mock.set_org_billing_error("b", true);
        }
        let r = sonnet(&h).await;
        r.assert_gateway_error(503, "api_error");
        let r = sonnet(&h).await;
        r.assert_gateway_error(503, "api_error");
        assert!(retry_after(&r) > 3000, "rests an hour by default");
        assert_eq!(readyz(&h).await.status, 503);
    }
}

#[tokio::test]
async fn an_ordinary_400_is_passed_on_with_its_body_and_rests_nothing() {
    let h = Harness::managed().await;
    let mut body = message_body(false);
    body["messages"] = serde_json::json!([]);
    let r = post_json(&format!("{}/v1/messages", h.url), &auth(CLIENT_KEY), &body).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert!(r.header("x-strait-error-source").is_none());
    let m = h.metrics().await;
    assert!(
        m.contains(r#"strait_upstream_keys{state="ready"} 2"#),
        "{m}"
    );
}
