//! The in-process limiter (no Redis): headers and `remaining`, gateway 429s, token
//! reservation and refunds, concurrency, tenants, and window resets on paused time.

mod common;

use std::time::Duration;

use common::{auth, post_json, Harness, Resp, UPSTREAM_KEYS};
use strait_chaos::mock::MockConfig;
use strait_node::config::{hash_key, RawClientKey, RawConfig, RawLimitSpec, RawTenant};
use strait_node::limits::local::LocalLimiter;
use strait_node::limits::{Dim, LimitSpec, Reservation, Settle, Subject};

const KEY_A: &str = "strait-limits-key-a";
const KEY_B: &str = "strait-limits-key-b";

fn hex(bytes: [u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn client_key(name: &str, key: &str, tenant: Option<&str>, limits: RawLimitSpec) -> RawClientKey {
    RawClientKey {
        name: name.into(),
        sha256: hex(hash_key(key)),
        tenant: tenant.map(Into::into),
        limits,
    }
}

async fn node_with(tweak: impl FnOnce(&mut RawConfig)) -> Harness {
    Harness::build(MockConfig::default(), tweak, &UPSTREAM_KEYS, &[]).await
}

fn body(max_tokens: u64, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": "Hello, Claude"}],
    })
}

async fn call(h: &Harness, key: &str, max_tokens: u64) -> Resp {
    post_json(
        &format!("{}/v1/messages", h.url),
        &auth(key),
        &body(max_tokens, false),
    )
    .await
}

fn num(r: &Resp, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("missing {name}: {:?}", r.headers))
        .parse()
        .unwrap()
}

fn assert_gateway_429(r: &Resp, dim: &str, scope: &str) {
    r.assert_gateway_error(429, "rate_limit_error");
    assert_eq!(r.header("x-strait-ratelimited"), Some("gateway"));
    assert_eq!(r.header("x-strait-ratelimit-dimension"), Some(dim));
    assert_eq!(r.header("x-strait-ratelimit-scope"), Some(scope));
    let after: u64 = r
        .header("retry-after")
        .expect("retry-after on a gateway 429")
        .parse()
        .unwrap();
    assert!(after >= 1, "retry-after {after}");
}

#[tokio::test]
async fn remaining_counts_down_and_the_gateway_429_says_so() {
    let h = node_with(|raw| {
        raw.auth.client_keys = vec![client_key("alpha", KEY_A, None, RawLimitSpec::default())];
        raw.limits.default = RawLimitSpec {
            rpm: Some(3),
            ..Default::default()
        };
    })
    .await;
    for expect in [2, 1, 0] {
        let r = call(&h, KEY_A, 16).await;
        assert_eq!(r.status, 200, "{}", r.text());
        // The client's own limit, not the mock's organisation limit of 4000.
        assert_eq!(num(&r, "anthropic-ratelimit-requests-limit"), 3);
        assert_eq!(num(&r, "anthropic-ratelimit-requests-remaining"), expect);
        assert!(r
            .header("anthropic-ratelimit-requests-reset")
            .is_some_and(|v| v.ends_with('Z')));
        assert!(
            r.header("anthropic-ratelimit-tokens-limit").is_none(),
            "upstream org headers are replaced"
        );
    }
    let r = call(&h, KEY_A, 16).await;
    assert_gateway_429(&r, "requests", "key");
    assert_eq!(num(&r, "anthropic-ratelimit-requests-remaining"), 0);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("alpha"));
    let m = h.metrics().await;
    assert!(
        m.contains(
            r#"strait_limiter_decisions_total{dimension="requests",result="limited",scope="key"} 1"#
        ),
        "{m}"
    );
    assert_eq!(
        h.mock.request_count(),
        3,
        "the refused request never went upstream"
    );
}

#[tokio::test]
async fn output_tokens_are_reserved_then_refunded_with_real_usage() {
    let h = node_with(|raw| {
        raw.auth.client_keys = vec![client_key(
            "alpha",
            KEY_A,
            None,
            RawLimitSpec {
                otpm: Some(100),
                ..Default::default()
            },
        )];
    })
    .await;
    // max_tokens 64 reserved; the mock answers with 12 output tokens.
    let r = call(&h, KEY_A, 64).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["usage"]["output_tokens"], 12);
    assert_eq!(num(&r, "anthropic-ratelimit-output-tokens-limit"), 100);
    assert_eq!(num(&r, "anthropic-ratelimit-output-tokens-remaining"), 36);
    // Without the refund 64 more would not fit (36 left); with it 88 are left.
    let mut remaining = 0;
    for _ in 0..50 {
        let r = call(&h, KEY_A, 64).await;
        if r.status == 200 {
            remaining = num(&r, "anthropic-ratelimit-output-tokens-remaining");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(remaining, 100 - 12 - 64);
    // A request that can never fit is refused, whatever the window.
    let r = call(&h, KEY_A, 101).await;
    assert_gateway_429(&r, "output_tokens", "key");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs 101"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn a_stream_holds_its_concurrency_slot_until_it_ends() {
    let h = node_with(|raw| {
        raw.auth.client_keys = vec![client_key(
            "alpha",
            KEY_A,
            None,
            RawLimitSpec {
                concurrency: Some(1),
                ..Default::default()
            },
        )];
    })
    .await;
    let url = format!("{}/v1/messages", h.url);
    let slow = tokio::spawn({
        let url = url.clone();
        async move {
            let mut hdrs = auth(KEY_A).to_vec();
            hdrs.push(("x-mock-pacing", "interval-ms=100,tokens=6"));
            post_json(&url, &hdrs, &body(64, true)).await
        }
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = call(&h, KEY_A, 16).await;
    assert_gateway_429(&r, "concurrency", "key");
    let streamed = slow.await.unwrap();
    assert_eq!(streamed.status, 200);
    assert!(streamed.event_names().contains(&"message_stop".to_string()));
    let mut ok = false;
    for _ in 0..50 {
        if call(&h, KEY_A, 16).await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the slot came back when the stream ended");
}

#[tokio::test]
async fn a_tenant_limit_is_shared_by_its_keys() {
    let h = node_with(|raw| {
        raw.tenants = vec![RawTenant {
            name: "acme".into(),
            limits: RawLimitSpec {
                rpm: Some(3),
                ..Default::default()
            },
        }];
        let own = RawLimitSpec {
            rpm: Some(10),
            ..Default::default()
        };
        raw.auth.client_keys = vec![
            client_key("a", KEY_A, Some("acme"), own.clone()),
            client_key("b", KEY_B, Some("acme"), own),
        ];
    })
    .await;
    for (i, key) in [KEY_A, KEY_B, KEY_A].into_iter().enumerate() {
        let r = call(&h, key, 16).await;
        assert_eq!(r.status, 200);
        // The tighter of key (10) and tenant (3) is what the headers show.
        assert_eq!(num(&r, "anthropic-ratelimit-requests-limit"), 3);
        assert_eq!(
            num(&r, "anthropic-ratelimit-requests-remaining"),
            2 - i as u64
        );
    }
    assert_gateway_429(&call(&h, KEY_B, 16).await, "requests", "tenant");
}

#[tokio::test]
async fn keys_without_limits_pass_upstream_headers_through() {
    let h = node_with(|raw| {
        raw.auth.client_keys = vec![client_key("alpha", KEY_A, None, RawLimitSpec::default())]
    })
    .await;
    let r = call(&h, KEY_A, 16).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        num(&r, "anthropic-ratelimit-requests-limit"),
        4000,
        "the mock's own header"
    );
}

// ----- time-dependent logic on paused time --------------------------------------

fn one(spec: LimitSpec) -> (std::sync::Arc<LocalLimiter>, Subject) {
    (
        std::sync::Arc::new(LocalLimiter::new(vec![spec])),
        Subject {
            scopes: [Some(0), None],
        },
    )
}

#[tokio::test(start_paused = true)]
async fn token_windows_reset_after_a_minute() {
    let (l, s) = one(LimitSpec {
        itpm: Some(100),
        ..Default::default()
    });
    let r = Reservation {
        input: 60,
        output: 0,
    };
    l.admit(s, r).unwrap();
    let d = l.admit(s, r).unwrap_err();
    assert_eq!(d.dim, Dim::InputTokens);
    assert_eq!(d.retry_after, Duration::from_secs(60));
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(
        l.admit(s, r).unwrap_err().retry_after,
        Duration::from_secs(30)
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(l.admit(s, r).unwrap().1.input.unwrap().remaining, 40);
}

#[tokio::test(start_paused = true)]
async fn a_refund_lands_only_in_its_own_window() {
    let (l, s) = one(LimitSpec {
        otpm: Some(100),
        ..Default::default()
    });
    let r = Reservation {
        input: 0,
        output: 80,
    };
    let (p, _) = l.admit(s, r).unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    let (p2, _) = l.admit(s, r).unwrap();
    // The first permit's window has ended: its refund must not free the new window.
    l.settle(
        &p,
        strait_node::limits::Actual {
            input: 0,
            output: 0,
        },
    );
    assert_eq!(
        l.admit(
            s,
            Reservation {
                input: 0,
                output: 21
            }
        )
        .unwrap_err()
        .dim,
        Dim::OutputTokens
    );
    l.settle(
        &p2,
        strait_node::limits::Actual {
            input: 0,
            output: 10,
        },
    );
    assert_eq!(
        l.admit(
            s,
            Reservation {
                input: 0,
                output: 90
            }
        )
        .unwrap()
        .1
        .output
        .unwrap()
        .remaining,
        0
    );
}

#[tokio::test(start_paused = true)]
async fn the_daily_budget_spans_a_day() {
    let (l, s) = one(LimitSpec {
        daily_tokens: Some(1000),
        ..Default::default()
    });
    let r = Reservation {
        input: 300,
        output: 300,
    };
    l.admit(s, r).unwrap();
    tokio::time::advance(Duration::from_secs(3600)).await;
    let d = l.admit(s, r).unwrap_err();
    assert_eq!(d.dim, Dim::DailyTokens);
    assert_eq!(d.retry_after, Duration::from_secs(23 * 3600));
    tokio::time::advance(Duration::from_secs(23 * 3600)).await;
    l.admit(s, r).unwrap();
}

#[tokio::test(start_paused = true)]
async fn concurrency_is_freed_by_settling_or_dropping() {
    let (l, s) = one(LimitSpec {
        concurrency: Some(1),
        ..Default::default()
    });
    let (data, _) = l.admit(s, Reservation::default()).unwrap();
    let permit = strait_node::limits::Permit::new(data, l.clone());
    assert_eq!(
        l.admit(s, Reservation::default()).unwrap_err().dim,
        Dim::Concurrency
    );
    drop(permit);
    assert_eq!(l.in_flight(0), 0);
    l.admit(s, Reservation::default()).unwrap();
}

#[test]
fn quick_start_flags_validate() {
    let bin = env!("CARGO_BIN_EXE_strait-node");
    let out = std::process::Command::new(bin)
        .args([
            "--check-config",
            "--default-limits",
            "rpm=60,itpm=40000,otpm=8000,concurrency=4",
            "--limit-mode",
            "exact",
            "--redis",
            "redis://127.0.0.1:1",
        ])
        .env_remove("STRAIT_UPSTREAM_KEYS")
        .env_remove("STRAIT_CLIENT_KEYS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("redis (Exact mode, 3 expected nodes)"),
        "{stdout}"
    );
    let out = std::process::Command::new(bin)
        .args(["--check-config", "--default-limits", "rpm=fast"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--default-limits"));
    let out = std::process::Command::new(bin)
        .args([
            "--check-config",
            "--redis",
            "redis://x",
            "--limit-mode",
            "fuzzy",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn http2_clients_get_the_same_rate_limit_headers() {
    // HTTP/1.1 responses have these written into the head by the server from the relay;
    // over HTTP/2 they must arrive all the same.
    let h = node_with(|raw| {
        raw.auth.client_keys = vec![client_key("alpha", KEY_A, None, RawLimitSpec::default())];
        raw.limits.default = RawLimitSpec {
            rpm: Some(5),
            ..Default::default()
        };
    })
    .await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    for expect in [4, 3] {
        let req = http::Request::post(format!("{}/v1/messages", h.url))
            .header("x-api-key", KEY_A)
            .header("anthropic-version", "2023-06-01")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body(16, false).to_string(),
            )))
            .unwrap();
        let resp = client.request(req).await.expect("h2c request");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let r = common::collect(resp, std::time::Instant::now()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(num(&r, "anthropic-ratelimit-requests-limit"), 5);
        assert_eq!(num(&r, "anthropic-ratelimit-requests-remaining"), expect);
        assert!(r.header("anthropic-ratelimit-tokens-limit").is_none());
    }
}
