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
    // The log writers start apart: they keep the old descriptor table, and this thread,
    // which serves, gets one of its own (`threads` says why).
    let _log = match strait_node::threads::start_apart(|| strait_node::telemetry::init(&config.log))
    {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("strait-node: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // A current-thread runtime: it runs the control work and the public listener's
    // first event loop; `server::run` starts one more thread per further worker, each
    // with its own runtime and share of the listener (`accept::loops`).
    let mut rt = tokio::runtime::Builder::new_current_thread();
    let rt = match rt
        .enable_all()
        .thread_keep_alive(strait_node::threads::BLOCKING_KEEP_ALIVE)
        .build()
    {
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
