//! The official `anthropic` Python SDK against a node: a plain message, a streamed one,
//! and an authentication error, exactly as a user's code would run them.

mod common;

use common::*;

#[tokio::test]
async fn official_python_sdk_plain_and_streamed() {
    let h = Harness::managed().await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk_client.py");
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
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("script prints JSON");
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
