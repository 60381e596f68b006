//! Shared harness for the coordinator's integration tests: a real etcd on free ports
//! in a temporary directory (stopped by PID), coordinators started in process or as
//! processes, and a small JSON HTTP client that reports status codes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::{Client, GetOptions};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use strait_chaos::process::Captured;
use strait_coordinator::config::{Config, RawConfig, SecretSources};
use strait_coordinator::server::Running;
use strait_node::config::Secret;

pub const TOKEN: &str = "test-admin-token-0123456789abcdef";
pub const KEK_HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .unwrap()
        .port()
}

/// A real etcd server for one test.
pub struct Etcd {
    pub endpoint: String,
    child: Child,
    pub dir: tempfile::TempDir,
    ports: (u16, u16),
}

impl Etcd {
    /// Starts etcd on free ports and waits until it answers (at most 15 s).
    pub async fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let child = Etcd::spawn(dir.path(), client, peer);
        let etcd = Etcd {
            endpoint: format!("http://127.0.0.1:{client}"),
            child,
            dir,
            ports: (client, peer),
        };
        etcd.wait_healthy().await;
        etcd
    }

    /// Kills etcd (SIGKILL), keeping its data directory.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts etcd again on the same ports and data.
    pub async fn restart(&mut self) {
        self.child = Etcd::spawn(self.dir.path(), self.ports.0, self.ports.1);
        self.wait_healthy().await;
    }

    fn spawn(dir: &Path, client: u16, peer: u16) -> Child {
        let bin = which("etcd").unwrap_or_else(|| {
            panic!("etcd is not installed: these tests need a real etcd (Debian: apt-get install etcd-server etcd-client)")
        });
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("etcd.log"))
            .expect("etcd log file");
        Command::new(bin)
            .args(["--name", "t", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args([
                "--initial-cluster",
                &format!("t={peer_url}"),
                "--logger=zap",
                "--log-outputs=stderr",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd")
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Ok(mut c)) = tokio::time::timeout(
                Duration::from_secs(1),
                Client::connect([&self.endpoint], None),
            )
            .await
            {
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), c.status()).await {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy; see {}",
                self.dir.path().join("etcd.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect([&self.endpoint], None)
            .await
            .expect("etcd client")
    }

    /// Every key and value under `/strait/`, as text.
    pub async fn dump(&self) -> Vec<(String, String)> {
        let mut c = self.client().await;
        let resp = c
            .get("/strait/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("get /strait/");
        resp.kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

pub fn config(etcd: &Etcd, id: &str, region: &str) -> Config {
    let raw = RawConfig {
        id: Some(id.into()),
        region: Some(region.into()),
        listen: Some("127.0.0.1:0".into()),
        etcd_endpoints: Some(vec![etcd.endpoint.clone()]),
        lease_ttl: Some("2s".into()),
        ..Default::default()
    };
    Config::build(
        raw,
        SecretSources {
            admin_token: Some(Secret::new(TOKEN)),
            kek: Some(Secret::new(KEK_HEX)),
            cluster_secret: None,
        },
    )
    .expect("valid test config")
}

/// A coordinator in this process, already the leader.
pub async fn leader(etcd: &Etcd) -> (Running, String) {
    let running = strait_coordinator::server::start(config(etcd, "c1", "r1"))
        .await
        .expect("coordinator starts");
    let url = running.url.clone();
    wait_until(Duration::from_secs(10), || running.election.is_leader()).await;
    (running, url)
}

pub async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A coordinator as a separate process (so a test can kill -9 it).
pub struct Proc {
    pub child: Child,
    pub url: String,
}

impl Proc {
    pub fn spawn(etcd: &Etcd, id: &str, region: &str) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strait-coordinator"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--etcd",
                &etcd.endpoint,
                "--id",
                id,
                "--region",
                region,
                "--lease-ttl",
                "2s",
            ])
            .args(["--log-level", "warn"])
            .env("STRAIT_ADMIN_TOKEN", TOKEN)
            .env("STRAIT_KEK", KEK_HEX)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn strait-coordinator");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let url = line.trim().rsplit(' ').next().expect("url").to_string();
        assert!(url.starts_with("http://"), "unexpected first line {line:?}");
        Proc { child, url }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A JSON answer.
pub struct Resp {
    pub status: StatusCode,
    pub json: Value,
    pub text: String,
}

/// Sends `method url` with an optional bearer token and JSON body.
pub async fn call(method: Method, url: &str, token: Option<&str>, body: Option<Value>) -> Resp {
    let client: HttpClient<HttpConnector, Full<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let bytes = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(&b).unwrap())
        }
        None => Bytes::new(),
    };
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(Full::new(bytes)).unwrap()),
    )
    .await
    .expect("answer within 10 s")
    .expect("request");
    let status = resp.status();
    let data = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&data).into_owned();
    Resp {
        status,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

pub async fn admin(method: Method, url: &str, body: Option<Value>) -> Resp {
    call(method, url, Some(TOKEN), body).await
}

/// Adds an upstream key to `pool` through the API (client keys need one to be servable).
pub async fn add_pool_key(url: &str, pool: &str, label: &str, key: &str) -> String {
    let r = admin(
        Method::POST,
        &format!("{url}/v1/pools/{pool}/keys"),
        Some(serde_json::json!({"label": label, "key": key})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.json["id"].as_str().unwrap().to_string()
}

/// The `strait-node` binary of this workspace, built if needed (a test of another
/// package cannot name it with `CARGO_BIN_EXE_*`).
pub fn node_binary() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_strait-coordinator"))
        .parent()
        .expect("target dir")
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", "strait-node", "--bin", "strait-node"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build for strait-node");
    assert!(status.success(), "cargo build -p strait-node failed");
    let bin = dir.join("strait-node");
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    bin
}

/// A `strait-node` process joined to the cluster through etcd.
pub struct NodeProc {
    pub proc: Captured,
    pub public: String,
    pub admin: String,
    _state: tempfile::TempDir,
}

impl NodeProc {
    pub fn spawn(bin: &Path, etcd: &Etcd, region: &str, node_id: &str, upstream: &str) -> NodeProc {
        NodeProc::spawn_with(bin, etcd, region, node_id, upstream, &[])
    }

    /// As [`NodeProc::spawn`], with extra environment variables.
    pub fn spawn_with(
        bin: &Path,
        etcd: &Etcd,
        region: &str,
        node_id: &str,
        upstream: &str,
        env: &[(&str, &str)],
    ) -> NodeProc {
        let state = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin);
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--no-access-log",
        ])
        .args([
            "--etcd",
            &etcd.endpoint,
            "--region",
            region,
            "--node-id",
            node_id,
            "--upstream",
            upstream,
        ])
        .arg("--state-dir")
        .arg(state.path())
        .env("STRAIT_KEK", KEK_HEX)
        .env_remove("STRAIT_UPSTREAM_KEYS")
        .env_remove("STRAIT_CLIENT_KEYS")
        .env_remove("RUST_LOG")
        .env_remove("STRAIT_CLUSTER_SECRET");
        cmd.envs(env.iter().copied());
        let (proc, line) =
            Captured::spawn_until(&mut cmd, "strait-node listening", Duration::from_secs(20));
        let v: Value = serde_json::from_str(&line).expect("JSON log line");
        let public = format!("http://{}", v["public"].as_str().unwrap());
        let admin = format!("http://{}", v["admin"].as_str().unwrap());
        NodeProc {
            proc,
            public,
            admin,
            _state: state,
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}
