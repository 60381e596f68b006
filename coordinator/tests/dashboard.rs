//! The dashboard in a real browser (headless Chromium) against a running cluster:
//! real etcd, two nodes in two regions reading their stats with the cluster secret,
//! and the coordinator. Sign-in (wrong token, then right), both regions and nodes
//! shown, numbers moving after traffic without a reload, a node drained from the page
//! (seen in etcd and on the page), a key created on the page and used at a node,
//! CSRF refusal, and the audit log. Screenshots go to `docs/dashboard/`.

mod browser;
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use browser::Browser;
use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use strait_coordinator::config::{Config, RawConfig, SecretSources};
use strait_node::config::Secret;

const CLUSTER_SECRET: &str = "e2e-cluster-secret-0123456789";
const UPSTREAM: &str = "sk-ant-api03-dashboard-upstream-0001";

/// A canned Messages API that accepts `UPSTREAM` only.
async fn upstream_mock() -> String {
    use axum::http::HeaderMap;
    let app = axum::Router::new().route(
        "/v1/messages",
        axum::routing::post(|headers: HeaderMap| async move {
            let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
            if key == Some(UPSTREAM) {
                (
                    StatusCode::OK,
                    axum::Json(json!({
                        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
                        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                        "stop_sequence": null, "usage": {"input_tokens": 12, "output_tokens": 7}
                    })),
                )
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"type": "error", "error": {"type": "authentication_error", "message": "bad key"}})),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn message(node: &str, key: &str) -> StatusCode {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let body = json!({"model": "claude-test", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let req = http::Request::post(format!("{node}/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client.request(req).await.expect("node answers");
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    status
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn eventually<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !f().await {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    let started = Instant::now();
    let bin = tokio::task::spawn_blocking(node_binary).await.unwrap();
    let etcd = Etcd::start().await;
    let raw = RawConfig {
        id: Some("c1".into()),
        region: Some("r1".into()),
        listen: Some("127.0.0.1:0".into()),
        etcd_endpoints: Some(vec![etcd.endpoint.clone()]),
        lease_ttl: Some("2s".into()),
        ..Default::default()
    };
    let config = Config::build(
        raw,
        SecretSources {
            admin_token: Some(Secret::new(TOKEN)),
            kek: Some(Secret::new(KEK_HEX)),
            cluster_secret: Some(Secret::new(CLUSTER_SECRET)),
        },
    )
    .unwrap();
    let running = strait_coordinator::server::start(config).await.unwrap();
    let url = running.url.clone();
    wait_until(Duration::from_secs(10), || running.election.is_leader()).await;
    let upstream = upstream_mock().await;
    let env = [("STRAIT_CLUSTER_SECRET", CLUSTER_SECRET)];
    let (a, b) = tokio::task::block_in_place(|| {
        (
            NodeProc::spawn_with(&bin, &etcd, "r1", "node-a", &upstream, &env),
            NodeProc::spawn_with(&bin, &etcd, "r2", "node-b", &upstream, &env),
        )
    });
    // The nodes' /stats refuse anyone without the cluster secret.
    let r = call(Method::GET, &format!("{}/stats", a.admin), None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    add_pool_key(&url, "default", "prod-1", UPSTREAM).await;
    let r = admin(
        Method::POST,
        &format!("{url}/v1/keys"),
        Some(json!({"name": "traffic"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let traffic_key = r.json["key"].as_str().unwrap().to_string();
    let r = admin(
        Method::POST,
        &format!("{url}/v1/keys"),
        Some(json!({"name": "tight", "limits": {"rpm": 3}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let tight_key = r.json["key"].as_str().unwrap().to_string();

    let br = Browser::start().await;
    let dir = shots();

    // An unsigned visitor gets the sign-in form; a wrong token shows an error, nothing else.
    br.goto(&format!("{url}/")).await;
    br.wait_for("#token", Duration::from_secs(10)).await;
    assert!(br.url().await.ends_with("/signin"), "{}", br.url().await);
    br.type_into("#token", "not-the-admin-token-at-all").await;
    br.click("#signin").await;
    br.wait_for("#signin-error", Duration::from_secs(10)).await;
    assert_eq!(br.text("#signin-error").await, "Wrong admin token.");
    assert!(
        br.find("nav").await.is_none(),
        "no page behind a wrong token"
    );
    br.screenshot(&dir.join("signin-error.png")).await;

    // The right token: the cluster page with both regions and nodes.
    br.type_into("#token", TOKEN).await;
    br.type_into("#name", "e2e-operator").await;
    br.click("#signin").await;
    br.wait_for("#region-r1", Duration::from_secs(10)).await;
    let cookie = br.cookie("strait_session").await.expect("a session cookie");
    assert_eq!(cookie["httpOnly"], true);
    assert_eq!(cookie["sameSite"], "Strict");
    br.wait_for("#node-r1-node-a", Duration::from_secs(15))
        .await;
    br.wait_for("#node-r2-node-b", Duration::from_secs(15))
        .await;
    eventually("both nodes scraped", Duration::from_secs(10), || async {
        let t = br.text("#node-r2-node-b .scrape").await;
        t.starts_with("ok")
    })
    .await;
    assert!(br.text("#region-r2").await.contains("node-b"));
    assert_eq!(br.attr("#node-r1-node-a", "data-state").await, "serving");
    br.screenshot(&dir.join("cluster.png")).await;

    // Traffic: numbers move after requests, without a page reload.
    br.goto(&format!("{url}/traffic")).await;
    br.wait_for("#traffic-node-node-a", Duration::from_secs(10))
        .await;
    br.script("window.__notReloaded = true; return 1;").await;
    let before = br.text("#traffic-node-node-a .total").await;
    // Spread over a few scrapes, so the charts have a line to draw.
    for _ in 0..4 {
        for _ in 0..10 {
            assert_eq!(message(&a.public, &traffic_key).await, StatusCode::OK);
        }
        for _ in 0..3 {
            assert_eq!(message(&b.public, &traffic_key).await, StatusCode::OK);
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    eventually(
        "the request total moves",
        Duration::from_secs(10),
        || async {
            let now = br.text("#traffic-node-node-a .total").await;
            now != before && now.parse::<u64>().unwrap_or(0) >= 40
        },
    )
    .await;
    eventually("a request rate shows", Duration::from_secs(10), || async {
        br.text("#traffic-r1 dd.rps").await != "0.0/s"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        br.script("return window.__notReloaded === true;").await,
        true,
        "the page updated itself without a reload"
    );
    // Cluster nodes defer through their embedded spool (no broker configured here).
    let traffic = br.text("#traffic-r1").await;
    assert!(
        traffic.contains("Dead letters") && traffic.contains("spool + spool"),
        "{traffic}"
    );
    br.screenshot(&dir.join("traffic.png")).await;

    // Drain node-a from the page, with a confirmation step.
    br.goto(&format!("{url}/cluster")).await;
    br.click("#drain-r1-node-a").await;
    br.wait_for("#confirm", Duration::from_secs(10)).await;
    assert!(br
        .text("#confirm-what")
        .await
        .contains("drain node node-a in region r1"));
    br.click("#confirm").await;
    br.wait_for("#result", Duration::from_secs(10)).await;
    assert!(
        br.text("#result").await.starts_with("Done"),
        "{}",
        br.text("body").await
    );
    let dump = etcd.dump().await;
    assert!(
        dump.iter()
            .any(|(k, v)| k == "/strait/config/drain/r1/node-a" && v.contains("true")),
        "{dump:?}"
    );
    br.goto(&format!("{url}/cluster")).await;
    eventually("node-a shows draining", Duration::from_secs(10), || async {
        br.attr("#node-r1-node-a", "data-state").await == "draining"
    })
    .await;
    br.screenshot(&dir.join("cluster-draining.png")).await;

    // Create a key on the page; it is shown once and works at a node.
    br.goto(&format!("{url}/config")).await;
    br.type_into("#new-key-name", "browser-key").await;
    br.click("#new-key").await;
    br.wait_for("#confirm", Duration::from_secs(10)).await;
    br.click("#confirm").await;
    br.wait_for("#new-key-secret", Duration::from_secs(10))
        .await;
    let secret = br.text("#new-key-secret").await;
    assert!(secret.starts_with("sk-strait-"), "{secret}");
    let t = Instant::now();
    while message(&b.public, &secret).await != StatusCode::OK {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the new key never worked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    br.goto(&format!("{url}/config")).await;
    br.wait_for("#key-browser-key", Duration::from_secs(10))
        .await;
    assert!(
        !br.text("body").await.contains(&secret),
        "the key is shown once"
    );
    br.screenshot(&dir.join("config.png")).await;

    // A state-changing form without the CSRF token is refused, and nothing changes.
    let session = cookie["value"].as_str().unwrap().to_string();
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let req = http::Request::post(format!("{url}/action"))
        .header("cookie", format!("strait_session={session}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(
            "op=drain_node&region=r2&node=node-b",
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(!etcd
        .dump()
        .await
        .iter()
        .any(|(k, _)| k.ends_with("drain/r2/node-b")));

    // Limits: a key at its limit tops the list; its 429s are the gateway's.
    let t = Instant::now();
    while message(&b.public, &tight_key).await != StatusCode::OK {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the tight key never worked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..4 {
        message(&b.public, &tight_key).await;
    }
    br.goto(&format!("{url}/limits")).await;
    eventually(
        "the tight key tops the limits",
        Duration::from_secs(10),
        || async {
            let t = br.text("#closest tbody tr").await;
            t.contains("tight") && t.contains("100.0%")
        },
    )
    .await;
    br.screenshot(&dir.join("limits.png")).await;
    br.goto(&format!("{url}/audit")).await;
    let audit = br.text("#audit").await;
    for want in [
        "e2e-operator",
        "drain node node-a in region r1",
        "create client key browser-key",
        "failed: wrong token",
        "missing or wrong CSRF token",
    ] {
        assert!(audit.contains(want), "audit log lacks {want:?}: {audit}");
    }
    br.screenshot(&dir.join("audit.png")).await;

    // On a phone.
    br.resize(390, 844).await;
    br.goto(&format!("{url}/traffic")).await;
    br.wait_for("#traffic-r1", Duration::from_secs(10)).await;
    br.screenshot(&dir.join("traffic-phone.png")).await;
    br.resize(1280, 900).await;

    // Sign out: the pages want a sign-in again.
    br.goto(&format!("{url}/cluster")).await;
    br.click("form.signout button").await;
    br.wait_for("#token", Duration::from_secs(10)).await;
    br.goto(&format!("{url}/cluster")).await;
    br.wait_for("#token", Duration::from_secs(10)).await;

    br.quit().await;
    drop((a, b));
    running.shutdown().await;
    eprintln!("dashboard browser test took {:?}", started.elapsed());
}
