//! `strait-mock-upstream`: the mock Anthropic API as a standalone process.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use strait_chaos::mock::{MockConfig, MockUpstream, Pacing};

/// Serves a mock Anthropic API until SIGINT or SIGTERM.
#[derive(Parser, Debug)]
#[command(name = "strait-mock-upstream", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Serve HTTPS with a throwaway CA (see --ca-out).
    #[arg(long)]
    tls: bool,
    /// Write the CA certificate (PEM) clients should trust to this file (with --tls).
    #[arg(long, requires = "tls")]
    ca_out: Option<PathBuf>,
    /// Delay before a stream's message_start, in milliseconds.
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
    /// Delay between streamed tokens, in milliseconds.
    #[arg(long, default_value_t = 0)]
    token_interval_ms: u64,
    /// Output tokens per reply (capped by the request's max_tokens).
    #[arg(long, default_value_t = 12)]
    tokens: u32,
    /// Do not record requests (for benchmarks).
    #[arg(long)]
    no_record: bool,
    /// Accept only this API key (repeatable); by default any non-empty key is accepted.
    #[arg(long = "valid-key")]
    valid_keys: Vec<String>,
    /// HTTP/2 streams a client may open on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, default_value_t = strait_chaos::mock::DEFAULT_H2_MAX_STREAMS)]
    h2_max_streams: u32,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> std::io::Result<()> {
    let config = MockConfig {
        addr: args.listen,
        tls: args.tls,
        record: !args.no_record,
        pacing: Pacing {
            ttft: Duration::from_millis(args.ttft_ms),
            interval: Duration::from_millis(args.token_interval_ms),
            tokens: args.tokens,
        },
        valid_keys: (!args.valid_keys.is_empty()).then_some(args.valid_keys),
        h2_max_streams: args.h2_max_streams,
        ..MockConfig::default()
    };
    let mock = MockUpstream::start(config).await?;
    if let (Some(path), Some(pem)) = (&args.ca_out, mock.cert_pem()) {
        std::fs::write(path, pem)?;
    }
    {
        // Scripts read this line to learn the port; flush so they do not wait for a buffer.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {}", mock.url())?;
        stdout.flush()?;
    }
    wait_for_signal().await?;
    mock.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
