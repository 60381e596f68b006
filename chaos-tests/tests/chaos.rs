//! The chaos subset `cargo test` runs: a whole cluster (three regions of two
//! `strait-node` processes, three etcd members, Redis, a broker per region, two
//! coordinators with DNS, the mock upstream, fault proxies) under a client workload,
//! three scenarios in a row, each asserting its verdict: lost 0, duplicated 0, false 202
//! 0, limiter overshoot within its bound. Plus the fault proxy's newer knobs (bandwidth
//! cap, slicing, half-open stall). A service that cannot start fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use strait_chaos::cluster::scenario::{self, RunSpec};
use strait_chaos::cluster::{Cluster, ClusterSpec};
use strait_chaos::faultproxy::{Direction, FaultProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Builds `strait-node` and `strait-coordinator` (a test of another package cannot name
/// them with `CARGO_BIN_EXE_*`) and returns their paths, beside this package's binary.
fn binaries() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_BIN_EXE_strait-chaos"))
        .parent()
        .expect("target dir")
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-q",
        "-p",
        "strait-node",
        "--bin",
        "strait-node",
        "-p",
        "strait-coordinator",
        "--bin",
        "strait-coordinator",
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(
        status.success(),
        "cargo build of strait-node and strait-coordinator failed"
    );
    let (node, coord) = (dir.join("strait-node"), dir.join("strait-coordinator"));
    assert!(
        node.is_file() && coord.is_file(),
        "binaries missing in {}",
        dir.display()
    );
    (node, coord)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_scenarios_keep_the_invariants() {
    let (node, coord) = binaries();
    let spec = ClusterSpec::standard(node, coord, 60);
    let run = RunSpec {
        warmup: Duration::from_secs(4),
        after: Duration::from_secs(8),
        settle: Duration::from_secs(45),
        ..RunSpec::default()
    };
    let mut failures = Vec::new();
    for name in ["kill-node", "partition-broker", "partition-redis"] {
        let s = scenario::find(name).expect("scenario");
        let mut cluster = Cluster::start(spec.clone()).await;
        let report = scenario::run(&s, &mut cluster, &run).await;
        cluster.teardown();
        eprintln!("{}", scenario::table(std::slice::from_ref(&report)));
        // Kept for a look after a failure: the counts and every request.
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos");
        let _ = std::fs::create_dir_all(&out);
        let _ = std::fs::write(
            out.join(format!("{name}.json")),
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        );
        let lines: String = report
            .records
            .iter()
            .filter_map(|r| serde_json::to_string(r).ok())
            .map(|l| l + "\n")
            .collect();
        let _ = std::fs::write(out.join(format!("{name}.requests.jsonl")), lines);
        // What every scenario must show, asserted one by one so a failure names it.
        let bad: Vec<&str> = report
            .checks
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(c, _)| c.as_str())
            .collect();
        if !bad.is_empty() {
            failures.push(format!(
                "{name}: {bad:?}; examples {:?} (report in {})\n{}",
                report.examples,
                out.display(),
                scenario::table(std::slice::from_ref(&report))
            ));
        }
        assert!(report.attempted > 50, "{name}: the workload ran");
    }
    assert!(failures.is_empty(), "verdicts failed: {failures:#?}");
}

/// An echo server; returns its address.
async fn echo() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_bandwidth_cap_slows_a_transfer_to_its_rate() {
    let proxy = FaultProxy::start(echo().await).await.unwrap();
    proxy.set_bandwidth(Some(100_000));
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    let data = vec![7u8; 50_000];
    let started = Instant::now();
    c.write_all(&data).await.unwrap();
    let mut got = vec![0u8; data.len()];
    c.read_exact(&mut got).await.unwrap();
    // 50 kB each way at 100 kB/s: at least 0.5 s one way (the two directions overlap).
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450), "took {took:?}");
    assert_eq!(got, data);
    proxy.set_bandwidth(None);
    let started = Instant::now();
    c.write_all(&data).await.unwrap();
    c.read_exact(&mut got).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "uncapped again"
    );
}

#[tokio::test]
async fn slicing_delivers_small_writes_in_order() {
    let proxy = FaultProxy::start(echo().await).await.unwrap();
    proxy.set_slicing(Some(3));
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    let data: Vec<u8> = (0..=255u8).cycle().take(4000).collect();
    c.write_all(&data).await.unwrap();
    let mut got = vec![0u8; data.len()];
    c.read_exact(&mut got).await.unwrap();
    assert_eq!(got, data);
}

#[tokio::test]
async fn a_half_open_stall_holds_one_direction_only() {
    // A server that counts what it got and answers each byte with one byte.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let _ = tx.send(n);
            let _ = s.write_all(&buf[..n]).await;
        }
    });
    let proxy = FaultProxy::start(addr).await.unwrap();
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    proxy.set_stall(Direction::Downstream, true);
    c.write_all(b"ping").await.unwrap();
    // The request gets through; the answer is held.
    let n = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("the upstream direction still flows");
    assert_eq!(n, Some(4));
    let mut buf = [0u8; 4];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut buf))
            .await
            .is_err(),
        "the answer must be held while stalled"
    );
    proxy.set_stall(Direction::Downstream, false);
    tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut buf))
        .await
        .expect("released after the stall")
        .unwrap();
    assert_eq!(&buf, b"ping");
}
