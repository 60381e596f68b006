//! `strait-node`: parse flags, load config, start the runtime, run the node.

use clap::Parser;
use strait_node::cli::{summary, Cli};

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
    let _log = strait_node::telemetry::init(&config.log);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.workers {
        rt.worker_threads(n);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strait-node: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(strait_node::server::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("strait-node: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
