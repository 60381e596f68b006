//! `relay_bench`: the seed's latency benchmark, the way users feel it. Region A's
//! direct path to the API crosses an ocean (a fault proxy: 75 ms each way, 150 ms
//! round trip, with spike episodes adding 200 ms to 2 s); region B's path is clean
//! (5 ms each way) and B's node is 20 ms each way (40 ms round trip) from A's. All
//! contenders run at once, so they live through the same spikes; each has its own
//! closed-loop clients sending non-streaming Messages requests. Prints client-side
//! p50/p95/p99 per contender as a Markdown table.
//!
//! Usage: `relay_bench --node-bin target/debug/strait-node [--seconds 60] [--clients 4]`
//! (needs `etcd` and `nginx` on PATH; bench/nginx/proxy.conf is the nginx contender).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use strait_chaos::cluster::procs;
use strait_chaos::faultproxy::{FaultProxy, Spikes};
use strait_chaos::mock::{MockConfig, MockUpstream};
use strait_chaos::process::Captured;

#[derive(Parser, Debug)]
#[command(name = "relay_bench")]
struct Args {
    /// The strait-node binary to run (say whether it is a debug or release build).
    #[arg(long)]
    node_bin: PathBuf,
    /// Measuring time, all contenders at once.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Closed-loop clients per contender.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Mean time between spike episodes on A's direct path, in seconds.
    #[arg(long, default_value_t = 5.0)]
    spike_every: f64,
    /// Length of one spike episode, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    spike_ms: u64,
    /// The nginx template (the seed's configuration).
    #[arg(long, default_value = "bench/nginx/proxy.conf")]
    nginx_conf: PathBuf,
}

const CLIENT_KEY: &str = "bench-client-key-0001";
const SECRET: &str = "relay-bench-cluster-secret-0123456789";

/// Stops its child when dropped (by PID: only what this run started): SIGTERM first,
/// so nginx's master takes its workers down with it, then SIGKILL if it lingers.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Node {
    proc: Captured,
    public: String,
    admin: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

/// A strait-node process; `toml` is its config file's text.
fn start_node(
    bin: &Path,
    dir: &Path,
    name: &str,
    listen: &str,
    upstream: SocketAddr,
    toml: &str,
) -> Node {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, toml).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(&config)
        .args(["--listen", listen, "--admin-listen", "127.0.0.1:0"])
        .args(["--log-format", "json", "--log-level", "info"])
        .args([
            "--no-access-log",
            "--upstream",
            &format!("http://{upstream}"),
        ])
        .arg("--state-dir")
        .arg(dir.join(format!("{name}-state")))
        .env("STRAIT_UPSTREAM_KEYS", "sk-ant-bench-upstream-0001")
        .env("STRAIT_CLIENT_KEYS", CLIENT_KEY)
        .env("STRAIT_CLUSTER_SECRET", SECRET)
        .env_remove("RUST_LOG");
    let (proc, line) =
        Captured::spawn_until(&mut cmd, "strait-node listening", Duration::from_secs(20));
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    Node {
        proc,
        public: v["public"].as_str().unwrap().to_string(),
        admin: v["admin"].as_str().unwrap().to_string(),
    }
}

fn start_nginx(template: &Path, dir: &Path, upstream: SocketAddr) -> (Proc, u16) {
    let (port, h2) = (procs::free_port(), procs::free_port());
    let text = std::fs::read_to_string(template).expect("the nginx template");
    let conf = text
        .replace("{{DIR}}", &dir.display().to_string())
        .replace("{{UPSTREAM}}", &upstream.to_string())
        .replace("{{PORT}}", &port.to_string())
        .replace("{{H2PORT}}", &h2.to_string())
        .replace("{{BUFFERING}}", "on")
        .replace("{{WORKERS}}", "1")
        .replace("{{ACCESS_LOG}}", "off");
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("nginx.stderr.log"))
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx runs (is it installed?)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Proc(child), port)
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn get_text(client: &HttpClient, url: &str) -> String {
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    match client.request(req).await {
        Ok(r) => String::from_utf8_lossy(
            &r.into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default(),
        )
        .into_owned(),
        Err(_) => String::new(),
    }
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

const BODY: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;

/// One contender's latencies and how many answers were not 200.
struct Run {
    name: &'static str,
    ms: Vec<f64>,
    errors: usize,
    relayed: usize,
}

async fn load(
    name: &'static str,
    url: String,
    clients: usize,
    warmup: Duration,
    measure: Duration,
) -> Run {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ms, mut errors, mut relayed) = (Vec::new(), 0, 0);
            while start.elapsed() < warmup + measure {
                let req = http::Request::post(&url)
                    .header("content-type", "application/json")
                    .header("anthropic-version", "2023-06-01")
                    .header("x-api-key", CLIENT_KEY)
                    .body(Full::new(Bytes::from_static(BODY.as_bytes())))
                    .unwrap();
                let sent = Instant::now();
                let outcome = match tokio::time::timeout(
                    Duration::from_secs(30),
                    client.request(req),
                )
                .await
                {
                    Ok(Ok(r)) => {
                        let ok = r.status() == 200;
                        let via = r.headers().contains_key("x-strait-relayed-via");
                        let body = r.into_body().collect().await;
                        Some((ok && body.is_ok(), via))
                    }
                    _ => None,
                };
                let took = sent.elapsed();
                if sent.duration_since(start) < warmup {
                    continue;
                }
                match outcome {
                    Some((true, via)) => {
                        ms.push(took.as_secs_f64() * 1000.0);
                        relayed += usize::from(via);
                    }
                    _ => errors += 1,
                }
            }
            (ms, errors, relayed)
        }));
    }
    let mut run = Run {
        name,
        ms: Vec::new(),
        errors: 0,
        relayed: 0,
    };
    for t in tasks {
        let (ms, errors, relayed) = t.await.unwrap();
        run.ms.extend(ms);
        run.errors += errors;
        run.relayed += relayed;
    }
    run.ms.sort_by(f64::total_cmp);
    run
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let dir = tempfile_dir();
    let mock = MockUpstream::start(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await
    .expect("mock upstream");
    let spikes = Spikes {
        every: Duration::from_secs_f64(args.spike_every),
        length: Duration::from_millis(args.spike_ms),
        extra_min: Duration::from_millis(200),
        extra_max: Duration::from_millis(2000),
    };
    // A's cross-ocean path: one proxy shared by every contender in region A, so they
    // all live through the same spike episodes.
    let path_a = FaultProxy::start(mock.addr()).await.unwrap();
    path_a.set_latency(Duration::from_millis(75));
    // The same ocean without spikes: the healthy path's reference.
    let path_a_calm = FaultProxy::start(mock.addr()).await.unwrap();
    path_a_calm.set_latency(Duration::from_millis(75));
    // B's clean path to the API, and the 40 ms round trip from A's node to B's.
    let path_b = FaultProxy::start(mock.addr()).await.unwrap();
    path_b.set_latency(Duration::from_millis(5));
    let b_port = procs::free_port();
    let b_listen: SocketAddr = format!("127.0.0.3:{b_port}").parse().unwrap();
    let a_to_b = FaultProxy::start(b_listen).await.unwrap();
    a_to_b.set_latency(Duration::from_millis(20));

    let etcd = procs::start_etcd(&dir, 1);
    let etcd_url = etcd[0].endpoint();
    // Probes every second (default timeout, 1 s); the trigger at its default ratio
    // with a short hold so the run need not wait half a minute.
    let cluster = |region: &str, id: &str, extra: &str, faster: bool| {
        format!(
            "[cluster]\netcd = [\"{etcd_url}\"]\nregion = \"{region}\"\nnode_id = \"{id}\"\n{extra}\n\
             [health]\nprobe_interval = \"1s\"\nprobe_timeout = \"1s\"\n\
             relay_when_faster = {faster}\nfaster_ratio = 2.0\nfaster_for = \"3s\"\n"
        )
    };
    let node_b = start_node(
        &args.node_bin,
        &dir,
        "b",
        &b_listen.to_string(),
        path_b.addr(),
        &cluster(
            "b",
            "b-1",
            &format!("advertise_public = \"{}\"", a_to_b.addr()),
            false,
        ),
    );
    let node_a = start_node(
        &args.node_bin,
        &dir,
        "a",
        "127.0.0.2:0",
        path_a.addr(),
        &cluster("a", "a-1", "", true),
    );
    // A second node of region A with the trigger off: it relays only while its
    // direct path's circuit is open (spikes make probes time out).
    let node_a_circuit = start_node(
        &args.node_bin,
        &dir,
        "a2",
        "127.0.0.4:0",
        path_a.addr(),
        &cluster("a", "a-2", "", false),
    );
    let solo = start_node(
        &args.node_bin,
        &dir,
        "solo",
        "127.0.0.1:0",
        path_a.addr(),
        "",
    );
    let (_nginx, nginx_port) = start_nginx(&args.nginx_conf, &dir, path_a.addr());

    // Wait for A to measure B and for the trigger to move its requests.
    let probe: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = get_text(&probe, &format!("http://{}/metrics", node_a.admin)).await;
        if metric(&m, "strait_relay_faster_peer") == 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "region A never relayed through B (trigger off?); its log:\n{}",
            node_a.proc.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("A relays through B; spikes on A's direct path start now");
    path_a.set_spikes(Some(spikes));

    let (warm, measure) = (Duration::from_secs(3), Duration::from_secs(args.seconds));
    let n = args.clients;
    let runs = tokio::join!(
        load(
            "direct, calm path (no spikes)",
            format!("http://{}/v1/messages", path_a_calm.addr()),
            n,
            warm,
            measure
        ),
        load(
            "direct, spiky path",
            format!("http://{}/v1/messages", path_a.addr()),
            n,
            warm,
            measure
        ),
        load(
            "nginx (seed config), spiky path",
            format!("http://127.0.0.1:{nginx_port}/v1/messages"),
            n,
            warm,
            measure
        ),
        load(
            "Strait, no relay, spiky path",
            format!("http://{}/v1/messages", solo.public),
            n,
            warm,
            measure
        ),
        load(
            "Strait, relay on an open circuit only",
            format!("http://{}/v1/messages", node_a_circuit.public),
            n,
            warm,
            measure
        ),
        load(
            "Strait, relay (peer much faster)",
            format!("http://{}/v1/messages", node_a.public),
            n,
            warm,
            measure
        ),
    );
    let a_metrics = get_text(&probe, &format!("http://{}/metrics", node_a.admin)).await;
    let rtt_b = metric(
        &a_metrics,
        r#"strait_relay_peer_rtt_seconds{node="b-1",region="b"}"#,
    );
    println!("| contender | requests | errors | relayed | P50 ms | P95 ms | P99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in [runs.0, runs.1, runs.2, runs.3, runs.4, runs.5] {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.name,
            r.ms.len(),
            r.errors,
            r.relayed,
            pct(&r.ms, 50.0),
            pct(&r.ms, 95.0),
            pct(&r.ms, 99.0),
            r.ms.last().copied().unwrap_or(f64::NAN)
        );
    }
    println!(
        "\nA's measured round trip to B: {:.1} ms; spikes every {} s on average, {} ms long, +200..2000 ms one way; {} s, {} clients per contender",
        rtt_b * 1000.0,
        args.spike_every,
        args.spike_ms,
        args.seconds,
        n
    );
    drop(node_b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A scratch directory under the system's temp dir, removed at the end.
fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
