//! `strait-node`: parse flags, load config, start the runtime, run the node.

use clap::Parser;
use strait_node::cli::{summary, Cli};

// The allocator is chosen at build time (node/Cargo.toml features; jemalloc unless
// built without default features): glibc kept the memory of large request bodies after
// they were freed, jemalloc's background thread gives it back within seconds. The
// figures are in docs/benchmarks.md "Memory after large bodies".
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let check_only = cli.check_config;
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("strait-node: invalid configuration: {}", e.message);
            return std::process::ExitCode::from(2);
        }
    };
    if check_only {
        print!("{}", summary(&config));
        return std::process::ExitCode::SUCCESS;
    }
    let _log = match strait_node::telemetry::init(&config.log) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("strait-node: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut rt = match config.workers {
        // One worker: a current-thread runtime does the same work without the
        // multi-thread scheduler's cross-thread wake-ups and bookkeeping on every task
        // switch, which a proxy makes several of per request (docs/benchmarks.md).
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strait-node: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(strait_node::server::run(config)) {
        Ok(stopped) => std::process::ExitCode::from(stopped.exit_code()),
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("strait-node: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
