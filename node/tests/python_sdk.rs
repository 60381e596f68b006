//! The official `anthropic` Python SDK against a node: a plain message, a streamed one,
//! an authentication error, and a 429 on one model class followed at once by calls
//! of other scopes, exactly as a user's code would run them.

mod common;

use common::*;

/// Runs `script` (in node/tests) with the SDK against `h`; returns what it printed.
async fn run_sdk(h: &Harness, script: &str) -> serde_json::Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let url = h.url.clone();
    // test.sh installs the SDK into its own virtualenv and points STRAIT_PYTHON at it.
    let python = std::env::var("STRAIT_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .env("STRAIT_URL", url)
            .env("STRAIT_KEY", CLIENT_KEY)
            .output()
    })
    .await
    .unwrap()
    .expect("python3 must be installed: run ./test.sh, which installs it with the anthropic SDK");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'anthropic'"),
        "the anthropic Python SDK is not installed: run ./test.sh, which installs it into target/sdk-venv"
    );
    assert!(out.status.success(), "SDK script failed:\n{stderr}");
    serde_json::from_slice(&out.stdout).expect("script prints JSON")
}

#[tokio::test]
async fn official_python_sdk_plain_and_streamed() {
    let h = Harness::managed().await;
    let v = run_sdk(&h, "sdk_client.py").await;
    assert!(!v["plain_text"].as_str().unwrap().is_empty(), "{v}");
    assert!(v["plain_output_tokens"].as_u64().unwrap() > 0);
    let events: Vec<&str> = v["stream_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(events.first(), Some(&"message_start"), "{events:?}");
    assert_eq!(events.last(), Some(&"message_stop"), "{events:?}");
    assert!(
        events.contains(&"content_block_delta") || events.contains(&"text"),
        "{events:?}"
    );
    assert!(!v["stream_text"].as_str().unwrap().is_empty());
    assert_eq!(v["auth_error"], "authentication_error");

    // The SDK's own auth style (Bearer or x-api-key) was swapped for a pool key.
    let seen = h.mock.requests();
    assert_eq!(
        seen.len(),
        2,
        "the wrong-key call never reached the upstream"
    );
    for r in seen {
        assert!(UPSTREAM_KEYS.contains(&r.header("x-api-key").unwrap()));
        assert!(r.header("authorization").is_none());
        assert!(r.header("anthropic-version").is_some());
    }
}

#[tokio::test]
async fn an_sdk_429_on_sonnet_leaves_its_next_calls_to_other_scopes_served() {
    const ORG_KEYS: [&str; 2] = [
        "org=acme sk-ant-upstream-one-0001",
        "org=acme sk-ant-upstream-two-0002",
    ];
    let h = Harness::build(
        strait_chaos::mock::MockConfig::default(),
        |_| {},
        &ORG_KEYS,
        &[CLIENT_KEY],
    )
    .await;
    for k in UPSTREAM_KEYS {
        h.mock.set_key_org(k, "acme");
    }
    h.mock.set_limit(
        strait_chaos::mock::MockEndpoint::Messages,
        Some("sonnet"),
        strait_chaos::mock::MockLimit {
            requests: 1,
            per: std::time::Duration::from_secs(60),
        },
    );
    let v = run_sdk(&h, "sdk_scopes.py").await;
    assert_eq!(v["sonnet_first"]["ok"], true, "{v}");
    // The upstream's own 429, passed on after one attempt (one organisation).
    assert_eq!(v["sonnet_limited"]["status"], 429, "{v}");
    assert_eq!(v["sonnet_limited"]["type"], "rate_limit_error", "{v}");
    assert!(v["sonnet_limited"]["source"].is_null(), "{v}");
    for call in ["count_tokens", "models", "haiku"] {
        assert_eq!(v[call]["ok"], true, "{call}: {v}");
    }
    // Sonnet itself is answered by the gateway, naming the scope, without a call.
    assert_eq!(v["sonnet_again"]["status"], 429, "{v}");
    assert_eq!(v["sonnet_again"]["source"], "gateway", "{v}");
    assert_eq!(v["sonnet_again"]["scope"], "messages/sonnet", "{v}");
    assert_eq!(h.mock.rate_limited_count(), 1);
}
