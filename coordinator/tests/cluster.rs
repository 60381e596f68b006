//! Coordinators as real processes: failover by election after kill -9, and the CLI.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use serde_json::json;

async fn is_leader(url: &str) -> bool {
    admin(Method::GET, &format!("{url}/v1/leader"), None).await.json["is_leader"] == true
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
    let leader_url = if leader_is_a { a.url.clone() } else { b.url.clone() };
    let r = admin(Method::PUT, &format!("{leader_url}/v1/tenants/before"), Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = admin(Method::PUT, &format!("{standby_url}/v1/tenants/refused"), Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);

    // kill -9: no resignation, the lease (TTL 2 s) must run out.
    let killed = Instant::now();
    if leader_is_a { a.kill9() } else { b.kill9() }
    loop {
        let r = admin(Method::PUT, &format!("{standby_url}/v1/tenants/after"), Some(json!({}))).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert_eq!(r.json["error"]["type"], "not_leader", "{}", r.text);
        assert!(killed.elapsed() < Duration::from_secs(2 + 3), "standby did not take over within TTL + 3 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed.elapsed();
    eprintln!("failover after kill -9 with lease TTL 2s: standby accepted a write after {took:?}");
    let r = admin(Method::GET, &format!("{standby_url}/v1/tenants"), None).await;
    let names: Vec<_> = r.json["tenants"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect();
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
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn cli_drives_the_admin_api_and_follows_the_leader() {
    let etcd = Etcd::start().await;
    let (running, url) = leader(&etcd).await;
    let standby = strait_coordinator::server::start(config(&etcd, "c2", "r2")).await.unwrap();
    let (url, standby_url) = (url, standby.url.clone());
    let run = move |args: Vec<String>, stdin: Option<String>| {
        let u = url.clone();
        tokio::task::spawn_blocking(move || cli(&u, &args.iter().map(String::as_str).collect::<Vec<_>>(), stdin.as_deref()))
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    let (ok, out, err) = run(s(&["tenants", "set", "team-a", "--rpm", "600", "--allow-region", "r1,r2"]), None).await.unwrap();
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(s(&["keys", "create", "alice", "--tenant", "team-a", "--otpm", "5000"]), None).await.unwrap();
    assert!(ok, "{out}{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let secret = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(err.contains("not shown again"));
    let (ok, out, _) = run(s(&["keys", "list"]), None).await.unwrap();
    assert!(ok && out.contains(&id) && !out.contains(&secret));
    let (ok, out, err) = run(s(&["keys", "update", &id, "--rpm", "7"]), None).await.unwrap();
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["limits"], json!({"rpm": 7, "otpm": 5000}), "update merges limits");
    let (ok, out, err) = run(s(&["pools", "add-key", "default", "--label", "prod-1"]), Some("sk-ant-from-stdin-123\n".into())).await.unwrap();
    assert!(ok, "{err}");
    assert!(!out.contains("sk-ant-from-stdin"));
    let (ok, _, err) = run(s(&["regions", "policy", "--key", &id, "--allow", "r1"]), None).await.unwrap();
    assert!(ok, "{err}");
    let (ok, _, _) = run(s(&["drain", "node", "r1", "node-a"]), None).await.unwrap();
    assert!(ok);
    let (ok, out, _) = run(s(&["nodes", "list"]), None).await.unwrap();
    assert!(ok && out.starts_with("REGION"), "{out}");
    let (ok, out, _) = run(s(&["keys", "revoke", &id]), None).await.unwrap();
    assert!(ok && out.contains("\"revoked\": true"));

    // Sent to the standby, a write is forwarded to the leader by the CLI.
    let standby_url2 = standby_url.clone();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || cli(&standby_url2, &["tenants", "set", "team-b"], None)).await.unwrap();
    assert!(ok, "{out}{err}");
    assert!(err.contains("not the leader"), "{err}");

    // Errors are reported with the API's message and a failing exit code.
    let (ok, _, err) = run(s(&["keys", "create", "bob", "--tenant", "ghost"]), None).await.unwrap();
    assert!(!ok && err.contains("unknown tenant"), "{err}");
    let u = standby_url.clone();
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_strait-coordinator")).args(["--url", &u, "keys", "list"]).env_remove("STRAIT_ADMIN_TOKEN").output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await
    .unwrap();
    assert!(!ok && err.contains("401"), "{err}");

    // --help is there for every command.
    let help = Command::new(env!("CARGO_BIN_EXE_strait-coordinator")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for word in ["serve", "keys", "tenants", "pools", "regions", "drain", "undrain", "nodes", "Examples"] {
        assert!(help.contains(word), "--help lacks {word}");
    }
    running.shutdown().await;
    standby.shutdown().await;
}

#[test]
fn check_config_validates_and_exits() {
    let out = Command::new(env!("CARGO_BIN_EXE_strait-coordinator"))
        .args(["serve", "--check-config", "--config", concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/coordinator.example.toml")])
        .env("STRAIT_ADMIN_TOKEN", TOKEN)
        .env("STRAIT_KEK", KEK_HEX)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
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
