//! Relay between real `strait-node` processes: east on 127.0.0.2 and west on
//! 127.0.0.3, one real etcd, one mock upstream behind a fault proxy per node. East's
//! path is cut: its clients get answers through west, streams byte for byte.

mod common;

use std::process::Command;
use std::time::Duration;

use common::etcd::Etcd;
use common::*;
use strait_chaos::faultproxy::{FaultProxy, FaultProxyHandle};
use strait_chaos::mock::{MockConfig, MockHandle, MockUpstream};
use strait_chaos::process::Captured;

const SECRET: &str = "relay-process-cluster-secret-0123456789";

/// A node process of `region` listening on `ip`, whose upstream is the mock behind
/// its own fault proxy. Killed when dropped.
struct RegionProcess {
    proc: Captured,
    url: String,
    admin: String,
    proxy: FaultProxyHandle,
    _dir: tempfile::TempDir,
}

impl RegionProcess {
    async fn start(etcd: &Etcd, mock: &MockHandle, region: &str, ip: &str) -> RegionProcess {
        let proxy = FaultProxy::start(mock.addr())
            .await
            .expect("fault proxy starts");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("node.toml");
        std::fs::write(
            &config,
            "[upstream]\nconnect_timeout = \"500ms\"\n\
             [cluster]\nlease_ttl = \"5s\"\n\
             [health]\nprobe_interval = \"300ms\"\nprobe_timeout = \"200ms\"\n",
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strait-node"));
        cmd.arg("--config")
            .arg(&config)
            .args(["--listen", &format!("{ip}:0")])
            .args(["--admin-listen", &format!("{ip}:0")])
            .args(["--log-format", "json", "--no-access-log"])
            .args(["--upstream", &format!("http://{}", proxy.addr())])
            .args(["--etcd", &etcd.url, "--region", region])
            .args(["--node-id", &format!("{region}-1")])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env("STRAIT_UPSTREAM_KEYS", UPSTREAM_KEYS.join(","))
            .env("STRAIT_CLIENT_KEYS", CLIENT_KEY)
            .env("STRAIT_CLUSTER_SECRET", SECRET)
            .env_remove("RUST_LOG")
            .env_remove("STRAIT_KEK");
        let (proc, line) =
            Captured::spawn_until(&mut cmd, "strait-node listening", Duration::from_secs(20));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        let public = v["public"].as_str().unwrap().to_string();
        let admin = v["admin"].as_str().unwrap().to_string();
        assert!(public.starts_with(ip), "{public}");
        RegionProcess {
            proc,
            url: format!("http://{public}"),
            admin: format!("http://{admin}"),
            proxy,
            _dir: dir,
        }
    }

    async fn message(&self, stream: bool) -> Resp {
        post_json(
            &format!("{}/v1/messages", self.url),
            &auth(CLIENT_KEY),
            &message_body(stream),
        )
        .await
    }

    async fn metric(&self, series: &str) -> f64 {
        metric_at(&self.admin, series).await
    }
}

impl Drop for RegionProcess {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

/// A body with its message ids (`msg_` and 24 characters) blanked: the mock names
/// each message afresh, every other byte must match.
fn unnamed(body: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    let mut from = 0;
    while let Some(at) = text[from..].find("\"id\":\"msg_") {
        let start = from + at + "\"id\":\"msg_".len();
        text.replace_range(start..start + 24, &"_".repeat(24));
        from = start + 24;
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_processes_relay_a_cut_region_through_its_peer_byte_for_byte() {
    let etcd = Etcd::start();
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .expect("mock upstream starts");
    let east = RegionProcess::start(&etcd, &mock, "east", "127.0.0.2").await;
    let west = RegionProcess::start(&etcd, &mock, "west", "127.0.0.3").await;
    eventually("east sees west", Duration::from_secs(10), async || {
        east.metric("strait_cluster_nodes").await == 2.0
    })
    .await;
    let direct = east.message(true).await;
    assert_eq!(direct.status, 200, "{}", direct.text());
    assert_eq!(direct.header("x-strait-relayed-via"), None);

    // East's path is cut: refused, every open connection reset.
    east.proxy.set_refuse(true);
    east.proxy.reset_all();
    for i in 0..5 {
        let r = east.message(false).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.header("x-strait-relayed-via"), Some("west"));
    }
    let relayed = east.message(true).await;
    assert_eq!(relayed.status, 200, "{}", relayed.text());
    assert_eq!(relayed.header("x-strait-relayed-via"), Some("west"));
    let via_west = west.message(true).await;
    assert_eq!(unnamed(&relayed.body), unnamed(&via_west.body));
    assert_eq!(unnamed(&relayed.body), unnamed(&direct.body));
    assert!(relayed.chunks.len() > 1, "streamed in pieces, not buffered");

    // The circuit opened on the way; east's /readyz says it serves by relay.
    let v = get(&format!("{}/readyz", east.admin), &[]).await.json();
    assert_eq!(v["status"], "warn", "{v}");
    assert_eq!(
        west.metric(r#"strait_relay_requests_total{direction="received"}"#)
            .await,
        6.0
    );
    // Healed: requests go direct again once a probe answers.
    east.proxy.set_refuse(false);
    eventually("east goes direct", Duration::from_secs(5), async || {
        east.message(false)
            .await
            .header("x-strait-relayed-via")
            .is_none()
    })
    .await;
}
