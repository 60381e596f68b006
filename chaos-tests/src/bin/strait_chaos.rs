//! `strait-chaos`: starts a whole Strait cluster on loopback, runs fault scenarios under
//! a client workload, and writes a JSON report per run plus the table of docs/chaos.md.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use strait_chaos::cluster::scenario::{self, RunSpec, SCENARIOS};
use strait_chaos::cluster::{locate_binary, Cluster, ClusterSpec};

#[derive(Parser)]
#[command(name = "strait-chaos", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Lists the scenarios and what each expects.
    List,
    /// Runs one scenario (`--scenario NAME`, repeatable) or every one (`--all`), each
    /// on a fresh cluster.
    Run {
        #[arg(long)]
        scenario: Vec<String>,
        #[arg(long)]
        all: bool,
        /// The strait-node binary [default: next to this one, or $STRAIT_NODE_BIN].
        #[arg(long)]
        node_bin: Option<PathBuf>,
        /// The strait-coordinator binary [default: next to this one, or $STRAIT_COORDINATOR_BIN].
        #[arg(long)]
        coordinator_bin: Option<PathBuf>,
        /// Where the JSON reports and the table go.
        #[arg(long, default_value = "chaos-results")]
        out: PathBuf,
        /// Client workers.
        #[arg(long, default_value_t = 8)]
        workers: usize,
        /// Requests per scenario at most.
        #[arg(long, default_value_t = 5000)]
        max_requests: usize,
        /// Requests per minute of the limited key.
        #[arg(long, default_value_t = 60)]
        limited_rpm: u64,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::List => {
            for s in SCENARIOS {
                println!(
                    "{:<20} {}\n{:<20} expects: {}\n",
                    s.name, s.what, "", s.expect
                );
            }
        }
        Cmd::Run {
            scenario,
            all,
            node_bin,
            coordinator_bin,
            out,
            workers,
            max_requests,
            limited_rpm,
        } => {
            let chosen: Vec<_> = if all {
                SCENARIOS.to_vec()
            } else {
                scenario
                    .iter()
                    .map(|n| {
                        scenario::find(n).unwrap_or_else(|| {
                            eprintln!("unknown scenario {n}; `strait-chaos list` names them");
                            std::process::exit(2)
                        })
                    })
                    .collect()
            };
            if chosen.is_empty() {
                eprintln!("name a --scenario or pass --all");
                std::process::exit(2);
            }
            let node_bin =
                node_bin.unwrap_or_else(|| locate_binary("strait-node", "STRAIT_NODE_BIN"));
            let coordinator_bin = coordinator_bin
                .unwrap_or_else(|| locate_binary("strait-coordinator", "STRAIT_COORDINATOR_BIN"));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
            let spec = ClusterSpec::standard(node_bin, coordinator_bin, limited_rpm);
            let run = RunSpec {
                workers,
                max_requests,
                ..RunSpec::default()
            };
            std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
            let mut reports = Vec::new();
            let mut failed = false;
            for s in chosen {
                eprintln!("== {}: {}", s.name, s.what);
                let report = rt.block_on(async {
                    let spec = ClusterSpec {
                        redis_cluster: s.redis_cluster,
                        broker_cluster: s.broker_cluster,
                        ..spec.clone()
                    };
                    let mut cluster = Cluster::start(spec).await;
                    let r = scenario::run(&s, &mut cluster, &run).await;
                    cluster.teardown();
                    // Brokers' epmd and sockets need a moment before the next cluster.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    r
                });
                let path = out.join(format!(
                    "{}-{}.json",
                    s.name,
                    report.started_at.replace(':', "")
                ));
                let json = serde_json::to_string_pretty(&report).unwrap_or_default();
                std::fs::write(&path, json).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let lines: String = report
                    .records
                    .iter()
                    .filter_map(|r| serde_json::to_string(r).ok())
                    .map(|l| l + "\n")
                    .collect();
                let _ = std::fs::write(path.with_extension("requests.jsonl"), lines);
                eprintln!(
                    "   {} in {:.0} s: {}",
                    if report.pass { "pass" } else { "FAIL" },
                    report.seconds,
                    report
                        .checks
                        .iter()
                        .filter(|(_, ok)| !ok)
                        .map(|(c, _)| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                failed |= !report.pass;
                reports.push(report);
            }
            let table = scenario::table(&reports);
            let _ = std::fs::write(out.join("table.md"), &table);
            println!("{table}");
            if failed {
                std::process::exit(1);
            }
        }
    }
}
