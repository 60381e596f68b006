//! Relaying the Anthropic API through a node: paths, headers, key swap, passthrough.

mod common;

use common::*;
use http::Method;
use serde_json::json;

#[tokio::test]
async fn message_is_relayed_with_upstream_key_swapped_in() {
    let h = Harness::managed().await;
    let r = post_json(
        &format!("{}/v1/messages", h.url),
        &[
            ("x-api-key", CLIENT_KEY),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "test-beta"),
            ("x-forwarded-for", "10.1.2.3"),
        ],
        &message_body(false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(
        r.header("request-id")
            .is_some_and(|id| id.starts_with("req_")),
        "upstream request-id kept"
    );
    assert!(
        r.header("anthropic-ratelimit-requests-limit").is_some(),
        "rate-limit headers kept"
    );
    let rid = r.header("x-strait-request-id").expect("gateway request id");
    assert!(rid.starts_with("strait_"));

    let seen = h.mock.requests();
    assert_eq!(seen.len(), 1);
    let up = &seen[0];
    let key = up.header("x-api-key").unwrap();
    assert!(
        UPSTREAM_KEYS.contains(&key),
        "an upstream key from the pool reached the upstream"
    );
    assert!(
        up.headers.iter().all(|(_, v)| !v.contains(CLIENT_KEY)),
        "client key never reaches upstream"
    );
    assert_eq!(up.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(up.header("anthropic-beta"), Some("test-beta"));
    assert_eq!(
        up.header("host"),
        Some(h.mock.addr().to_string().as_str()),
        "host rewritten"
    );
    assert_eq!(up.header("x-forwarded-for"), Some("10.1.2.3, 127.0.0.1"));
    assert!(up.header("connection").is_none());
    assert_eq!(up.json().unwrap(), message_body(false), "body unchanged");
}

#[tokio::test]
async fn bearer_auth_works_like_x_api_key() {
    let h = Harness::managed().await;
    let bearer = format!("Bearer {CLIENT_KEY}");
    let r = post_json(
        &format!("{}/v1/messages", h.url),
        &[
            ("authorization", &bearer),
            ("anthropic-version", "2023-06-01"),
        ],
        &message_body(false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let up = &h.mock.requests()[0];
    assert!(
        up.header("authorization").is_none(),
        "client bearer token not forwarded"
    );
    assert!(UPSTREAM_KEYS.contains(&up.header("x-api-key").unwrap()));
}

#[tokio::test]
async fn keys_rotate_across_requests() {
    let h = Harness::managed().await;
    for _ in 0..4 {
        let r = h.message(false, &[]).await;
        assert_eq!(r.status, 200);
    }
    let used: std::collections::HashSet<String> = h
        .mock
        .requests()
        .iter()
        .map(|r| r.header("x-api-key").unwrap().to_string())
        .collect();
    assert_eq!(used.len(), 2, "both pool keys used: {used:?}");
}

#[tokio::test]
async fn passthrough_forwards_the_clients_own_key() {
    let h = Harness::passthrough().await;
    let r = post_json(
        &format!("{}/v1/messages", h.url),
        &auth("sk-ant-client-own"),
        &message_body(false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        h.mock.requests()[0].header("x-api-key"),
        Some("sk-ant-client-own")
    );

    // The upstream's own 401 passes through unchanged (not marked as gateway-made).
    h.mock.set_valid_keys(Some(vec!["sk-ant-valid".into()]));
    let r = post_json(
        &format!("{}/v1/messages", h.url),
        &auth("sk-ant-wrong"),
        &message_body(false),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    assert!(r.header("x-strait-error-source").is_none());
    assert!(!r.text().contains("sk-ant-wrong"));
}

#[tokio::test]
async fn other_api_paths_pass_through() {
    let h = Harness::managed().await;
    let a = auth(CLIENT_KEY);

    let r = post_json(&format!("{}/v1/messages/count_tokens", h.url), &a, &json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "Hello there"}]})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["input_tokens"].as_u64().unwrap() > 0);

    let r = get(&format!("{}/v1/models?limit=2", h.url), &a).await;
    assert_eq!(r.status, 200);
    assert!(!r.json()["data"].as_array().unwrap().is_empty());
    assert_eq!(
        h.mock.requests().last().unwrap().path,
        "/v1/models?limit=2",
        "query kept"
    );

    let r = get(&format!("{}/v1/models/claude-nonexistent", h.url), &a).await;
    assert_eq!(r.status, 404);
    assert!(
        r.header("x-strait-error-source").is_none(),
        "upstream 404 passes through"
    );

    let batch = json!({"requests": [{"custom_id": "a", "params": message_body(false)}]});
    let r = post_json(&format!("{}/v1/messages/batches", h.url), &a, &batch).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = get(&format!("{}/v1/messages/batches/{id}", h.url), &a).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], id.as_str());
}

#[tokio::test]
async fn file_upload_streams_through_with_every_byte() {
    let h = Harness::managed().await;
    let payload = vec![b'x'; 3 * 1024 * 1024 + 17];
    let mut headers = auth(CLIENT_KEY).to_vec();
    headers.push(("content-type", "application/octet-stream"));
    let r = send(
        Method::POST,
        &format!("{}/v1/files", h.url),
        &headers,
        payload.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["size_bytes"].as_u64(), Some(payload.len() as u64));
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_are_admin_only() {
    let h = Harness::managed().await;
    let r = h.message(false, &[]).await;
    assert_eq!(r.status, 200);
    let usage = r.json()["usage"].clone();
    let m = h.metrics().await;
    assert!(
        m.contains(
            r#"strait_requests_total{model="claude-sonnet-4-5",route="messages",status="200"} 1"#
        ),
        "{m}"
    );
    let out = usage["output_tokens"].as_u64().unwrap();
    assert!(
        m.contains(&format!(
            r#"strait_tokens_total{{direction="output",model="claude-sonnet-4-5"}} {out}"#
        )),
        "{m}"
    );
    assert!(m.contains("strait_upstream_ttfb_seconds_bucket"));
    assert!(m.contains("strait_upstream_connections 1"), "{m}");
    for key in UPSTREAM_KEYS.iter().chain([&CLIENT_KEY]) {
        assert!(!m.contains(key), "no key in metrics");
    }
    // Not on the public listener.
    let r = get(&format!("{}/metrics", h.url), &[]).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn health_is_served_on_both_listeners() {
    let h = Harness::managed().await;
    for base in [&h.url, &h.admin] {
        let r = get(&format!("{base}/livez"), &[]).await;
        assert_eq!(r.status, 200);
        let r = get(&format!("{base}/readyz"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/health+json"));
        assert_eq!(r.json()["status"], "pass");
        assert!(r.body.len() < 5 * 1024);
    }
}

#[tokio::test]
async fn plain_listener_speaks_h2c_with_prior_knowledge() {
    let h = Harness::managed().await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let req = http::Request::post(format!("{}/v1/messages", h.url))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            message_body(true).to_string(),
        )))
        .unwrap();
    let resp = client.request(req).await.expect("h2c request");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let r = collect(resp, std::time::Instant::now()).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.event_names().last().map(String::as_str),
        Some("message_stop")
    );
}
