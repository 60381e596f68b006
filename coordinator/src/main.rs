//! The `strait-coordinator` binary: parse the command line, hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    strait_coordinator::cli::run(strait_coordinator::cli::Cli::parse())
}
