//! Coordinators as real processes: failover by election after kill -9, and the CLI.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use serde_json::json;

async fn is_leader(url: &str) -> bool {
    admin(Method::GET, &format!("{url}/v1/leader"), None)
        .await
        .json["is_leader"]
        == true
}

#[tokio::test]
async fn coordinator_failover_by_election_after_kill_9() {
    let etcd = Etcd::start().await;
    let mut a = Proc::spawn(&etcd, "coord-a", "r1");
    let mut b = Proc::spawn(&etcd, "coord-b", "r2");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (leader_is_a, standby_url) = loop {
        if is_leader(&a.url).await {
            break (true, b.url.clone());
        }
        if is_leader(&b.url).await {
            break (false, a.url.clone());
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let leader_url = if leader_is_a {
        a.url.clone()
    } else {
        b.url.clone()
    };
    let r = admin(
        Method::PUT,
        &format!("{leader_url}/v1/tenants/before"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = admin(
        Method::PUT,
        &format!("{standby_url}/v1/tenants/refused"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);

    // kill -9: no resignation, the lease (TTL 2 s) must run out.
    let killed = Instant::now();
    if leader_is_a {
        a.kill9()
    } else {
        b.kill9()
    }
    loop {
        let r = admin(
            Method::PUT,
            &format!("{standby_url}/v1/tenants/after"),
            Some(json!({})),
        )
        .await;
        if r.status == StatusCode::OK {
            break;
        }
        assert_eq!(r.json["error"]["type"], "not_leader", "{}", r.text);
        assert!(
            killed.elapsed() < Duration::from_secs(2 + 3),
            "standby did not take over within TTL + 3 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed.elapsed();
    eprintln!("failover after kill -9 with lease TTL 2s: standby accepted a write after {took:?}");
    let r = admin(Method::GET, &format!("{standby_url}/v1/tenants"), None).await;
    let names: Vec<_> = r.json["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["after", "before"]);
}

fn cli(url: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strait-coordinator"))
        .args(["--url", url])
        .args(args)
        .env("STRAIT_ADMIN_TOKEN", TOKEN)
        .env_remove("STRAIT_UPSTREAM_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the CLI");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn cli_drives_the_admin_api_and_follows_the_leader() {
    let etcd = Etcd::start().await;
    let (running, url) = leader(&etcd).await;
    let standby = strait_coordinator::server::start(config(&etcd, "c2", "r2"))
        .await
        .unwrap();
    let (url, standby_url) = (url, standby.url.clone());
    let run = move |args: Vec<String>, stdin: Option<String>| {
        let u = url.clone();
        tokio::task::spawn_blocking(move || {
            cli(
                &u,
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
                stdin.as_deref(),
            )
        })
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    let (ok, out, err) = run(
        s(&[
            "tenants",
            "set",
            "team-a",
            "--rpm",
            "600",
            "--allow-region",
            "r1,r2",
        ]),
        None,
    )
    .await
    .unwrap();
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(
        s(&["pools", "add-key", "default", "--label", "prod-1"]),
        Some("sk-ant-from-stdin-123\n".into()),
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(!out.contains("sk-ant-from-stdin"));
    let (ok, out, err) = run(
        s(&[
            "keys", "create", "alice", "--tenant", "team-a", "--otpm", "5000",
        ]),
        None,
    )
    .await
    .unwrap();
    assert!(ok, "{out}{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let secret = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(err.contains("not shown again"));
    let (ok, out, _) = run(s(&["keys", "list"]), None).await.unwrap();
    assert!(ok && out.contains(&id) && !out.contains(&secret));
    let (ok, out, err) = run(s(&["keys", "update", &id, "--rpm", "7"]), None)
        .await
        .unwrap();
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["limits"],
        json!({"rpm": 7, "otpm": 5000}),
        "update merges limits"
    );
    let (ok, out, err) = run(
        s(&["pools", "add-key", "other", "--label", "prod-2"]),
        Some("sk-ant-second-456\n".into()),
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("uk_"));
    let (ok, _, err) = run(
        s(&["regions", "policy", "--key", &id, "--allow", "r1"]),
        None,
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    let (ok, _, _) = run(s(&["drain", "node", "r1", "node-a"]), None)
        .await
        .unwrap();
    assert!(ok);
    let (ok, out, _) = run(s(&["nodes", "list"]), None).await.unwrap();
    assert!(ok && out.starts_with("REGION"), "{out}");
    let (ok, out, _) = run(s(&["keys", "revoke", &id]), None).await.unwrap();
    assert!(ok && out.contains("\"revoked\": true"));

    // Sent to the standby, a write is forwarded to the leader by the CLI.
    let standby_url2 = standby_url.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        cli(&standby_url2, &["tenants", "set", "team-b"], None)
    })
    .await
    .unwrap();
    assert!(ok, "{out}{err}");
    assert!(err.contains("not the leader"), "{err}");

    // Errors are reported with the API's message and a failing exit code.
    let (ok, _, err) = run(s(&["keys", "create", "bob", "--tenant", "ghost"]), None)
        .await
        .unwrap();
    assert!(!ok && err.contains("unknown tenant"), "{err}");
    let u = standby_url.clone();
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_strait-coordinator"))
            .args(["--url", &u, "keys", "list"])
            .env_remove("STRAIT_ADMIN_TOKEN")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert!(!ok && err.contains("401"), "{err}");

    // --help is there for every command.
    let help = Command::new(env!("CARGO_BIN_EXE_strait-coordinator"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for word in [
        "serve", "keys", "tenants", "pools", "regions", "drain", "undrain", "nodes", "Examples",
    ] {
        assert!(help.contains(word), "--help lacks {word}");
    }
    running.shutdown().await;
    standby.shutdown().await;
}

#[tokio::test]
async fn cli_groups_pool_keys_by_org() {
    let etcd = Etcd::start().await;
    let (running, url) = leader(&etcd).await;
    let run = |args: &[&str], stdin: Option<&str>| {
        let (u, args, stdin) = (
            url.clone(),
            args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            stdin.map(str::to_string),
        );
        tokio::task::spawn_blocking(move || {
            cli(
                &u,
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
                stdin.as_deref(),
            )
        })
    };
    let (ok, out, err) = run(
        &[
            "pools", "add-key", "default", "--label", "prod-1", "--org", "acme",
        ],
        Some("sk-ant-org-cli-123\n"),
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    let added: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(added["org"], "acme", "{out}");
    let id = added["id"].as_str().unwrap().to_string();

    let (ok, out, _) = run(&["pools", "list"], None).await.unwrap();
    assert!(ok && out.contains("\"org\": \"acme\""), "{out}");

    let (ok, out, err) = run(&["pools", "set-org", "default", &id, ""], None)
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert!(!out.contains("org"), "{out}");
    let (ok, out, _) = run(&["pools", "list"], None).await.unwrap();
    assert!(ok && !out.contains("acme"), "{out}");

    let (ok, _, err) = run(&["pools", "set-org", "default", &id, "acme corp"], None)
        .await
        .unwrap();
    assert!(
        !ok && err.contains("HTTP 400") && err.contains("org"),
        "{err}"
    );
    running.shutdown().await;
}

#[test]
fn check_config_validates_and_exits() {
    let out = Command::new(env!("CARGO_BIN_EXE_strait-coordinator"))
        .args([
            "serve",
            "--check-config",
            "--config",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../deploy/coordinator.example.toml"
            ),
        ])
        .env("STRAIT_ADMIN_TOKEN", TOKEN)
        .env("STRAIT_KEK", KEK_HEX)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(TOKEN));
    let bad = Command::new(env!("CARGO_BIN_EXE_strait-coordinator"))
        .args(["serve", "--check-config"])
        .env_remove("STRAIT_ADMIN_TOKEN")
        .env("STRAIT_KEK", KEK_HEX)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("admin token"));
}

/// A canned Anthropic API that answers 200 only to the upstream keys it knows,
/// so a 200 through the node proves the node opened the sealed pool key.
async fn upstream_mock(keys: &'static [&'static str]) -> String {
    use axum::http::HeaderMap;
    let app = axum::Router::new().route(
        "/v1/messages",
        axum::routing::post(move |headers: HeaderMap| async move {
            let key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or("");
            if keys.contains(&key) {
                (
                    StatusCode::OK,
                    axum::Json(json!({
                        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
                        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": null,
                        "usage": {"input_tokens": 3, "output_tokens": 1}
                    })),
                )
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// One request through the node with a client key; the status.
async fn through_node(node: &str, client_key: &str) -> StatusCode {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let body = json!({"model": "claude-test", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let req = http::Request::post(format!("{node}/v1/messages"))
        .header("x-api-key", client_key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
        .unwrap();
    let resp = client.request(req).await.expect("node answers");
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    status
}

/// Polls until the node answers `want` for `key`; the time it took.
async fn until_node(node: &str, key: &str, want: StatusCode, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let got = through_node(node, key).await;
        if got == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "node still answers {got} (want {want}) after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_through_the_coordinator_take_effect_on_nodes() {
    const UPSTREAM: &str = "sk-ant-api03-e2e-upstream-key-0001";
    let bin = tokio::task::spawn_blocking(node_binary).await.unwrap();
    let etcd = Etcd::start().await;
    let (running, url) = leader(&etcd).await;
    let upstream = upstream_mock(&[UPSTREAM]).await;
    let node =
        tokio::task::block_in_place(|| NodeProc::spawn(&bin, &etcd, "r1", "node-e2e", &upstream));

    // The node registers: the coordinator's discovery and cluster view list it.
    let t = Instant::now();
    loop {
        let sd = call(Method::GET, &format!("{url}/v1/sd/prometheus"), None, None).await;
        if sd.json.as_array().is_some_and(|a| a.len() == 1) {
            assert_eq!(sd.json[0]["labels"]["node"], "node-e2e");
            assert_eq!(
                sd.json[0]["targets"][0]
                    .as_str()
                    .map(|t| format!("http://{t}")),
                Some(node.admin.clone())
            );
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "node never registered: {}",
            node.proc.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Upstream key, then a client key: the node serves the new key within 1 s.
    add_pool_key(&url, "default", "prod-1", UPSTREAM).await;
    let r = admin(
        Method::POST,
        &format!("{url}/v1/keys"),
        Some(json!({"name": "first"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let first = r.json["key"].as_str().unwrap().to_string();
    let took = until_node(&node.public, &first, StatusCode::OK, Duration::from_secs(1)).await;
    eprintln!("first key accepted by the node {took:?} after the coordinator answered");

    // Propagation over 30 more changes: coordinator's 201 → node accepts the key.
    let mut after_ack = Vec::new();
    let mut end_to_end = Vec::new();
    for i in 0..30 {
        let sent = Instant::now();
        let r = admin(
            Method::POST,
            &format!("{url}/v1/keys"),
            Some(json!({"name": format!("k{i}")})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let acked = Instant::now();
        let key = r.json["key"].as_str().unwrap().to_string();
        until_node(&node.public, &key, StatusCode::OK, Duration::from_secs(1)).await;
        after_ack.push(acked.elapsed());
        end_to_end.push(sent.elapsed());
    }
    after_ack.sort();
    end_to_end.sort();
    eprintln!(
        "PROPAGATION n=30 ack->accept p50={:?} p99={:?} max={:?}; request->accept p50={:?} p99={:?}",
        percentile(&after_ack, 50.0),
        percentile(&after_ack, 99.0),
        after_ack.last().unwrap(),
        percentile(&end_to_end, 50.0),
        percentile(&end_to_end, 99.0)
    );

    // Revocation and a region drain take effect too.
    let id = r_id(&url, "first").await;
    let r = admin(Method::DELETE, &format!("{url}/v1/keys/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let took = until_node(
        &node.public,
        &first,
        StatusCode::UNAUTHORIZED,
        Duration::from_secs(1),
    )
    .await;
    eprintln!("revocation effective on the node after {took:?}");
    let r = admin(Method::POST, &format!("{url}/v1/regions/r1/drain"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let t = Instant::now();
    loop {
        let ready = call(Method::GET, &format!("{}/readyz", node.admin), None, None).await;
        let view = admin(Method::GET, &format!("{url}/v1/cluster"), None).await;
        if ready.status == StatusCode::SERVICE_UNAVAILABLE
            && view.json["regions"][0]["nodes"][0]["state"] == "draining"
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "drain not applied: readyz {} view {}",
            ready.status,
            view.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(node);
    running.shutdown().await;
}

async fn r_id(url: &str, name: &str) -> String {
    let keys = admin(Method::GET, &format!("{url}/v1/keys"), None).await;
    keys.json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}
