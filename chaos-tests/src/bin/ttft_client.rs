//! `strait-ttft-client`: times streams to their first token, for bench/run.py.
//!
//! The Python client it replaces shared a CPU with the mock and added its own event
//! loop and collector pauses to every sample (a millisecond at the tail, on direct as
//! on the proxies), which buried what a proxy adds. This one waits on a current-thread
//! runtime and does nothing between the request write and the first token but read.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Opens `--streams` streaming Messages calls, `--concurrency` at a time, each on a new
/// connection, and prints one JSON object: `{"ttft_ms": [...], "errors": N}`.
#[derive(Parser, Debug)]
#[command(name = "strait-ttft-client", version)]
struct Args {
    /// Where to send the streams (HTTP/1.1, plain TCP).
    #[arg(long)]
    target: SocketAddr,
    /// How many streams in all.
    #[arg(long, default_value_t = 300)]
    streams: usize,
    /// How many at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// The client key sent as `x-api-key`.
    #[arg(long, default_value = "c1")]
    key: String,
}

const BODY: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":300,"stream":true,"messages":[{"role":"user","content":"Hello, Claude"}]}"#;
/// A stream that has not finished in this long counts as an error.
const STREAM_LIMIT: Duration = Duration::from_secs(30);

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (samples, errors) = rt.block_on(run(&args));
    let list: Vec<String> = samples.iter().map(|ms| format!("{ms:.4}")).collect();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        r#"{{"ttft_ms":[{}],"errors":{errors}}}"#,
        list.join(",")
    );
}

async fn run(args: &Args) -> (Vec<f64>, usize) {
    let request: Arc<[u8]> = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: bench\r\ncontent-type: application/json\r\n\
         x-api-key: {}\r\nanthropic-version: 2023-06-01\r\nConnection: close\r\n\
         content-length: {}\r\n\r\n{BODY}",
        args.key,
        BODY.len()
    )
    .into_bytes()
    .into();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.streams {
        let permit = gate.clone().acquire_owned().await.expect("semaphore open");
        let (target, request) = (args.target, request.clone());
        tasks.spawn(async move {
            let r = tokio::time::timeout(STREAM_LIMIT, one(target, &request)).await;
            drop(permit);
            r.map_err(|_| "timed out".to_string()).and_then(|r| r)
        });
    }
    let (mut samples, mut errors) = (Vec::with_capacity(args.streams), 0);
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(ms)) => samples.push(ms),
            Ok(Err(e)) => {
                errors += 1;
                eprintln!("stream failed: {e}");
            }
            Err(e) => {
                errors += 1;
                eprintln!("stream task failed: {e}");
            }
        }
    }
    (samples, errors)
}

/// One stream: from the request's write to the first `content_block_delta`, in ms;
/// the rest of the stream is read to its end so the connection closes cleanly.
async fn one(target: SocketAddr, request: &[u8]) -> Result<f64, String> {
    let mut conn = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    conn.set_nodelay(true).map_err(|e| e.to_string())?;
    let started = Instant::now();
    conn.write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut seen = Vec::with_capacity(4096);
    let mut buf = vec![0u8; 64 * 1024];
    let mut ttft = None;
    loop {
        let n = conn
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        if ttft.is_none() {
            seen.extend_from_slice(&buf[..n]);
            if contains(&seen, b"content_block_delta") {
                ttft = Some(started.elapsed());
                if !seen.starts_with(b"HTTP/1.1 200") {
                    let head = String::from_utf8_lossy(&seen[..seen.len().min(60)]).into_owned();
                    return Err(format!("answered {head:?}"));
                }
            }
        }
    }
    match ttft {
        Some(t) => Ok(t.as_secs_f64() * 1000.0),
        None => {
            let head = String::from_utf8_lossy(&seen[..seen.len().min(200)]).into_owned();
            Err(format!("stream ended without a token: {head:?}"))
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
