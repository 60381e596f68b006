//! `GET /stats` on the admin listener: the dashboard's JSON (traffic, latency,
//! tokens, errors, limits against usage, key pools, readiness), and the cluster
//! secret that guards it.

mod common;

use common::*;
use strait_node::config::{RawLimitSpec, Secret};
use strait_node::stats::NodeStats;

const SECRET: &str = "cluster-secret-for-stats-0001";

#[tokio::test]
async fn stats_count_traffic_and_usage_and_need_the_cluster_secret() {
    let h = Harness::managed_with(|raw| {
        raw.limits.default = RawLimitSpec {
            rpm: Some(50),
            ..Default::default()
        };
        raw.cluster.cluster_secret = Some(Secret::new(SECRET));
    })
    .await;
    let url = format!("{}/stats", h.admin);

    // The secret is required, even on loopback, once one is configured.
    let r = get(&url, &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = get(&url, &[("authorization", "Bearer not-the-secret-at-all")]).await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("wrong cluster secret"), "{}", r.text());
    assert!(!r.text().contains(SECRET));

    for _ in 0..3 {
        assert_eq!(h.message(false, &[]).await.status, 200);
    }
    assert_eq!(h.message(true, &[]).await.status, 200);
    let bearer = format!("Bearer {SECRET}");
    let r = get(&url, &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s: NodeStats = serde_json::from_str(&r.text()).expect("a NodeStats document");
    assert_eq!(s.requests.total, 4, "{}", r.text());
    assert_eq!(s.requests.by_status.get("200"), Some(&4));
    assert!(s.tokens.input > 0 && s.tokens.output > 0, "{:?}", s.tokens);
    assert_eq!(s.latency.count, 4);
    assert!(s.latency.quantile(0.99).is_some());
    assert_eq!(s.ttft.count, 1, "one stream, one first token");
    assert_eq!(s.ready.status, "pass", "{:?}", s.ready);
    assert!(!s.draining);
    assert_eq!(s.keys.ready, 2);
    assert_eq!(s.keys.pools[0].keys.len(), 2);
    assert_eq!(s.limiter.backend, "local");
    let key = s
        .limiter
        .scopes
        .iter()
        .find(|sc| sc.kind == "key")
        .expect("the client key is limited");
    assert_eq!(key.limits.get("requests"), Some(&50));
    assert_eq!(key.used.get("requests"), Some(&4), "{:?}", key);
    assert!((key.fullness() - 0.08).abs() < 1e-9);
    assert!(!r.text().contains("sk-ant"), "never an upstream key");
    assert!(!r.text().contains(CLIENT_KEY), "never a client key");
}

#[tokio::test]
async fn without_a_secret_stats_answer_on_a_loopback_admin_listener() {
    let h = Harness::managed().await;
    let r = get(&format!("{}/stats", h.admin), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["requests"]["total"], 0);
}
