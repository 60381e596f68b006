//! `deploy/demo.sh` with this workspace's debug binaries: every part of the one-machine
//! cluster answers (each node's readiness, a proxied and a deferred request with the
//! printed client key, the dashboard and the admin API with the printed token, the DNS
//! server when the coordinator has one, the traffic generator), and Ctrl-C leaves no
//! process and no port behind.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::call;
use http::{Method, StatusCode};
use serde_json::json;

/// The directory holding this workspace's binaries, with `strait-node` and
/// `strait-mock-upstream` built into it (a test of this package only builds its own).
fn bin_dir() -> PathBuf {
    let node = common::node_binary();
    let dir = node.parent().expect("bin dir").to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-q",
        "-p",
        "strait-chaos",
        "--bin",
        "strait-mock-upstream",
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().expect("run cargo build").success(),
        "cargo build -p strait-chaos failed"
    );
    dir
}

fn demo_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo.sh")
}

fn read_env(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

fn alive(pid: &str) -> bool {
    // A zombie is dead for our purpose: it holds no port and runs nothing.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// One DNS query (A, recursion not asked) over UDP; returns the reply's bytes.
fn dns_query(server: &str, name: &str) -> Vec<u8> {
    let mut q = vec![0x5a, 0x17, 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    sock.send_to(&q, server).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).expect("a DNS reply within 3 s");
    buf[..n].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_cluster_answers_everywhere_and_ctrl_c_stops_everything() {
    let bins = bin_dir();
    let work = tempfile::tempdir().unwrap();
    let mut child = Command::new("bash")
        .arg(demo_script())
        .arg("--bin-dir")
        .arg(&bins)
        .args(["--nodes-per-region", "1", "--workdir"])
        .arg(work.path())
        .env_remove("STRAIT_ADMIN_TOKEN")
        .env_remove("STRAIT_COORDINATOR_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run deploy/demo.sh");
    let started = Instant::now();

    // Lines arrive on a thread so a stuck start fails the test instead of hanging it.
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = String::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(120).saturating_sub(started.elapsed())) {
            Ok(line) if line == "demo: ready" => break,
            Ok(line) => {
                printed.push_str(&line);
                printed.push('\n');
            }
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-INT", &child.id().to_string()])
                    .status();
                let _ = child.wait();
                panic!(
                    "the demo did not get ready within 120 s; it printed:\n{printed}\nlogs in {}",
                    work.path().join("logs").display()
                );
            }
        }
    }
    let up = started.elapsed();
    let env = read_env(&work.path().join("demo.env"));
    let key = &env["CLIENT_KEY"];
    let token = &env["ADMIN_TOKEN"];
    assert!(printed.contains(key.as_str()), "the client key is printed");
    assert!(
        printed.contains(token.as_str()),
        "the admin token is printed"
    );
    assert!(printed.contains("curl ") && printed.contains("anthropic.Anthropic(base_url="));

    let nodes: Vec<&str> = env["NODES"].split(',').collect();
    let admins: Vec<&str> = env["NODE_ADMINS"].split(',').collect();
    assert_eq!(nodes.len(), 3, "one node in each of three regions");
    for admin in &admins {
        let r = call(Method::GET, &format!("{admin}/readyz"), None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{admin}/readyz: {}", r.text);
    }
    let message = json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
        "messages": [{"role": "user", "content": "Hello"}]});
    for node in &nodes {
        let (status, body) = anthropic_call(
            Method::POST,
            &format!("{node}/v1/messages"),
            key,
            Some(&message),
            false,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{node}: {body}");
        assert_eq!(body["type"], "message", "{body}");
    }
    // A deferred request: RabbitMQ and Redis take it (202), and it is delivered.
    let (status, body) = anthropic_call(
        Method::POST,
        &format!("{}/v1/messages", nodes[0]),
        key,
        Some(&message),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_str().expect("a deferred id").to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = format!("{}/v1/strait/deferred/{id}", nodes[0]);
        let (status, body) = anthropic_call(Method::GET, &url, key, None, false).await;
        if status == StatusCode::OK {
            assert_eq!(body["type"], "message", "{body}");
            break;
        }
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert!(
            Instant::now() < deadline,
            "deferred {id} not delivered in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let coord = &env["COORDINATOR"];
    let r = call(Method::GET, &format!("{coord}/signin"), None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("Sign in"), "{}", r.text);
    let r = call(
        Method::GET,
        &format!("{coord}/v1/cluster"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    for region in ["us-east", "eu-west", "ap-south"] {
        assert!(r.text.contains(region), "region {region} in {}", r.text);
    }

    let help = Command::new(bins.join("strait-coordinator"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    if String::from_utf8_lossy(&help.stdout).contains("--dns-listen") {
        let server = env
            .get("DNS")
            .expect("the demo starts the coordinator's DNS");
        let reply = dns_query(server, &env["DNS_NAME"]);
        assert_eq!(&reply[..2], &[0x5a, 0x17], "the reply answers our query id");
        assert!(reply[2] & 0x80 != 0, "a response, not a query");
        assert_eq!(reply[3] & 0x0f, 0, "NOERROR");
        assert!(u16::from_be_bytes([reply[6], reply[7]]) >= 1, "an address");
    } else {
        assert!(!env.contains_key("DNS"));
    }

    // The traffic generator gets answers.
    let log = work.path().join("logs/traffic.log");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(" 200")
    {
        assert!(
            Instant::now() < deadline,
            "no answered request in {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Ctrl-C: the script stops everything it started.
    let pids: Vec<String> = env["PIDS"].split(' ').map(str::to_string).collect();
    assert!(pids.len() >= 9, "{pids:?}");
    assert!(pids.iter().all(|p| alive(p)), "every part still runs");
    let stop = Instant::now();
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stop.elapsed() < Duration::from_secs(60),
            "the demo did not stop within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(130), "exit status after Ctrl-C");
    let left: Vec<&String> = pids.iter().filter(|p| alive(p)).collect();
    assert!(left.is_empty(), "processes left running: {left:?}");
    let mut ports: Vec<u16> = nodes.iter().chain(&admins).map(|u| port_of(u)).collect();
    ports.push(port_of(coord));
    ports.push(port_of(&env["ETCD"]));
    ports.push(port_of(env["REDIS"].trim_end_matches('/')));
    ports.push(env["AMQP_PORT"].parse().unwrap());
    ports.push(env["EPMD_PORT"].parse().unwrap());
    for p in ports {
        assert!(
            TcpStream::connect(("127.0.0.1", p)).is_err(),
            "port {p} still open after the demo stopped"
        );
    }
    eprintln!(
        "demo up in {:.1} s, stopped in {:.1} s",
        up.as_secs_f64(),
        stop.elapsed().as_secs_f64()
    );
}

/// An Anthropic API call with the client key (and `strait-defer: always` when
/// `defer`); returns the status and the JSON body.
async fn anthropic_call(
    method: Method,
    url: &str,
    key: &str,
    body: Option<&serde_json::Value>,
    defer: bool,
) -> (StatusCode, serde_json::Value) {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {key}"))
        .header("anthropic-version", "2023-06-01");
    if defer {
        req = req.header("strait-defer", "always");
    }
    let bytes = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(b).unwrap())
        }
        None => Bytes::new(),
    };
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(Full::new(bytes)).unwrap()),
    )
    .await
    .expect("an answer within 10 s")
    .expect("request");
    let status = resp.status();
    let data = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&data);
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|_| serde_json::Value::String(text.into_owned()));
    (status, json)
}
